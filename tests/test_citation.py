"""CITATION.cff is valid against the Citation File Format 1.2.0 schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

import odenet

ROOT = Path(__file__).resolve().parents[1]


def _load() -> dict:
    # CFF is YAML 1.2; dates must stay strings for the schema, so load with BaseLoader
    # semantics for scalars that look like dates.
    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return yaml.load((ROOT / "CITATION.cff").read_text(encoding="utf-8"), Loader=Loader)


def test_citation_file_validates_against_cff_1_2_0_schema():
    schema = json.loads((ROOT / "tests" / "data" / "cff-1.2.0.schema.json").read_text(encoding="utf-8"))
    cff = _load()
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(cff), key=str)
    assert not errors, "\n".join(e.message for e in errors)
    assert cff["cff-version"] == "1.2.0"


def test_citation_version_matches_the_package():
    if odenet.__version__ != "0+unknown":
        assert str(_load()["version"]) == odenet.__version__


def test_the_validator_rejects_a_citation_without_authors():
    # Guards the test above against a schema that accepts anything.
    schema = json.loads((ROOT / "tests" / "data" / "cff-1.2.0.schema.json").read_text(encoding="utf-8"))
    cff = _load()
    del cff["authors"]
    assert not jsonschema.Draft7Validator(schema).is_valid(cff)
