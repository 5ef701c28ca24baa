"""Errors a user can fix, with the parameters they name kept apart from the sentence.

A rule is checked once, in the lowest layer that can state it, but its message is read
through several front ends: Python (``step_size=0``), the command line (``--step-size 0``)
and TOML specs (``step_size = 0``). So a ``ConfigError`` is a sentence with ``{name}``
fields for the parameters it mentions, and each front end renders those fields its own
way; ``str(err)`` is the Python rendering. The CLI maps names to flags in one place
(``odenet_cli.options``); no library module mentions a command-line flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["NAME_ONLY", "ConfigError", "literal", "python_name"]


class _NameOnly:
    """A mention of a parameter without a value: ``{resume}`` renders as ``resume``."""

    def __repr__(self) -> str:
        return "NAME_ONLY"

    def __reduce__(self) -> str:
        return "NAME_ONLY"  # unpickles as this module's singleton, so ``is NAME_ONLY`` holds


NAME_ONLY: Any = _NameOnly()

Namer = Callable[[str, Any], str]


def literal(text: str) -> str:
    """Text to put into a template as it is (braces escaped)."""
    return str(text).replace("{", "{{").replace("}", "}}")


def python_name(param: str, value: Any) -> str:
    """``step_size=0.0``, or the bare name for ``NAME_ONLY``."""
    return param if value is NAME_ONLY else f"{param}={value!r}"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the fix.

    template: the sentence, with a ``{param}`` field for each parameter it mentions.
    mentions: param → the value to show with it (``NAME_ONLY`` for the bare name).
    context: a prefix naming where the setting came from (a study cell, a spec file),
        rendered as ``context: sentence``.
    """

    def __init__(self, template: str, *, context: str = "", **mentions: Any) -> None:
        self.template = template
        self.mentions = mentions
        self.context = context
        super().__init__(self.render(python_name))

    def render(self, name: Namer) -> str:
        """The sentence with each mentioned parameter written by ``name(param, value)``."""
        text = self.template.format(**{k: name(k, v) for k, v in self.mentions.items()})
        return f"{self.context}: {text}" if self.context else text

    def within(self, context: str) -> ConfigError:
        """The same error, prefixed by where it happened (outermost context first)."""
        outer = f"{context}: {self.context}" if self.context else context
        return _rebuild(type(self), self.template, outer, self.mentions)

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised on a Dask worker and re-raised here: keep the template and mentions.
        return (_rebuild, (type(self), self.template, self.context, self.mentions))


def _rebuild(cls: type[ConfigError], template: str, context: str, mentions: dict[str, Any]) -> ConfigError:
    err = cls.__new__(cls)
    ConfigError.__init__(err, template, context=context, **mentions)
    return err
