"""The benchmark suite's machinery: cases, the race that times them, the table it writes.

A benchmark module offers ``cases(options) -> list[Case]``. A ``Case`` is a set of named
contenders (argument-free callables: one call is one timed unit of work), one of which
is the reference, an optional correctness check run before any timing, and optional
target ratios. ``race`` warms every contender up, then calls them alternately, one call
each per round with the order flipped every round, so slow drift of the machine hits all
of them alike; ``rows`` turns the times into one table row per contender with

    ratio = reference median / contender median      (> 1: the contender is faster)

so every ratio in the table reads the same way round. Contenders that could not be
built (torchode not installed) are listed as skipped, with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import torchode
from benchmarks.timing import NOISY, load_average, quartiles, spread, sync, timed

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Options:
    """How the suite is run (built by the command line, read by every case provider).

    quick: tiny sizes and 2 repeats, for a smoke run (numbers not meaningful).
    compile: include the ``torch.compile`` contenders of the solver loops; compile_resnet:
        also compile the two ResNet-110 training steps (minutes on a CPU);
        compile_backend: their backend (``inductor``; ``eager`` traces without generating
        code, for smoke tests).
    repeats, warmup: override each case's own counts when given.
    """

    quick: bool = False
    device: str = "cpu"
    compile: bool = True
    compile_resnet: bool = False
    compile_backend: str = "inductor"
    repeats: int | None = None
    warmup: int | None = None
    seed: int = 0

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


@dataclass(frozen=True)
class Contender:
    """One way of doing the case's work. ``fn()`` is one timed call.

    compiled: the first call compiles (``torch.compile``); it is timed on its own and
        reported as ``compile_s``, never mixed into the series.
    nfe: field evaluations per call, where the case counts them.
    """

    name: str
    fn: Callable[[], object]
    compiled: bool = False
    nfe: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Case:
    """A benchmark's case: contenders racing on the same work.

    reference: the contender every ratio is taken against (ratio = reference / contender).
    targets: contender name → the ratio it should reach.
    check: run before timing; raises ``AssertionError`` when the contenders disagree,
        returns what it measured (max differences, evaluation counts) for the table.
    skipped: (contender, reason) for contenders that could not be built here.
    """

    benchmark: str
    name: str
    description: str
    reference: str
    contenders: tuple[Contender, ...]
    repeats: int
    warmup: int
    targets: dict[str, float] = field(default_factory=dict)
    check: Callable[[], dict[str, Any]] | None = None
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        names = [c.name for c in self.contenders]
        assert len(set(names)) == len(names), f"{self.benchmark}/{self.name}: duplicate contenders {names}"
        assert self.reference in names, f"{self.benchmark}/{self.name}: reference {self.reference!r} not in {names}"
        assert set(self.targets) <= set(names), f"{self.benchmark}/{self.name}: targets for unknown contenders"


@dataclass
class Series:
    """The timings of one contender in one case (seconds)."""

    times: list[float] = field(default_factory=list)
    compile_s: float | None = None


def compile_times(case: Case, device: torch.device) -> dict[str, float]:
    """The first call of each compiled contender, which compiles: timed apart, before the
    case's check (which calls the contenders too) and the race."""
    return {c.name: timed(c.fn, device) for c in case.contenders if c.compiled}


def race(case: Case, device: torch.device, repeats: int, warmup: int) -> dict[str, Series]:
    """Warm up, then call the contenders alternately, the order flipped every round."""
    series = {c.name: Series() for c in case.contenders}
    for _ in range(warmup):
        for c in case.contenders:
            c.fn()
    sync(device)
    order = list(case.contenders)
    for i in range(repeats):
        for c in order if i % 2 == 0 else order[::-1]:
            series[c.name].times.append(timed(c.fn, device))
    return series


def rows(case: Case, series: dict[str, Series]) -> list[dict[str, Any]]:
    """One table row per contender (the reference's ratio is 1)."""
    ref = series[case.reference].times
    ref_median = statistics.median(ref)
    out = []
    for c in case.contenders:
        ts = series[c.name].times
        q1, median, q3 = quartiles(ts)
        ratio = ref_median / median
        target = case.targets.get(c.name)
        out.append(
            {
                "benchmark": case.benchmark,
                "case": case.name,
                "contender": c.name,
                "reference": case.reference,
                "median_s": median,
                "q1_s": q1,
                "q3_s": q3,
                "min_s": min(ts),
                "n": len(ts),
                "ratio": ratio,
                # Cross-checks less sensitive to other work on the machine: the ratio of
                # the fastest calls, and the median over rounds of the ratio within a round.
                "ratio_of_minima": min(ref) / min(ts),
                "paired_ratio": statistics.median(r / t for r, t in zip(ref, ts, strict=True)),
                "target": target,
                "met": None if target is None else bool(ratio >= target),
                "noisy": bool(spread(ts) > NOISY),
                "compile_s": series[c.name].compile_s,
                "nfe": c.nfe,
                "note": c.note,
            }
        )
    return out


# -- provenance ------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meta(options: Options, argv: list[str], only: list[str]) -> dict[str, Any]:
    """Where and how the table was measured (``load_average_after`` is filled in at the end)."""
    from odenet.experiment import device_name, environment

    device = options.torch_device
    env = environment(device_name(device))
    return {
        "schema_version": SCHEMA_VERSION,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m benchmarks", *argv]),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchdiffeq": _version("torchdiffeq"),
        "torchode": _version("torchode") if torchode is not None else None,  # installed and importable
        "odenet": env["odenet_version"],
        "git_commit": env["git_commit"],
        "device": env["device"],
        "threads": torch.get_num_threads(),
        "quick": options.quick,
        "only": only,
        "options": dataclasses.asdict(options),
        "load_average_before": load_average(),
        "load_average_after": None,
    }


def write_table(table: dict[str, Any], path: Path) -> None:
    """The table as indented JSON, written beside ``path`` and moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# -- reading it --------------------------------------------------------------------------
def format_seconds(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def print_case(case: Case, case_rows: list[dict[str, Any]], info: dict[str, Any], file: Any = None) -> None:
    out = file or sys.stdout
    print(f"\n[{case.benchmark} / {case.name}] {case.description}", file=out)
    for key, value in info.items():
        print(f"  check: {key} = {value}", file=out)
    width = max(len(r["contender"]) for r in case_rows)
    for r in case_rows:
        line = (
            f"  {r['contender']:>{width}}: median {format_seconds(r['median_s']):>10}"
            f"  (quartiles {format_seconds(r['q1_s'])}–{format_seconds(r['q3_s'])}, min {format_seconds(r['min_s'])},"
            f" n={r['n']})"
        )
        if r["contender"] != case.reference:
            line += f"  ratio {r['ratio']:.3f} (minima {r['ratio_of_minima']:.3f}, paired {r['paired_ratio']:.3f})"
        else:
            line += "  [reference]"
        if r["target"] is not None:
            line += f"  target ≥ {r['target']:.3g}: {'met' if r['met'] else 'NOT met'}"
        if r["compile_s"] is not None:
            line += f"  compile {r['compile_s']:.1f} s"
        if r["nfe"] is not None:
            line += f"  nfe {r['nfe']}"
        print(line, file=out)
        if r["noisy"]:
            print(
                f"  WARNING: noisy: {r['contender']} upper/lower quartile > {NOISY}; another process was "
                "probably competing for the cores: rerun on an idle machine",
                file=out,
            )
    for name, reason in case.skipped:
        print(f"  skipped {name}: {reason}", file=out)


README_BEGIN = "<!-- performance:begin -->"
README_END = "<!-- performance:end -->"


def readme_section(table: dict[str, Any]) -> str:
    """The README's Performance table, from a suite table (what lies between the markers)."""
    m = table["meta"]
    load = m["load_average_before"]
    commit = m["git_commit"][:12] + ("-dirty" if m["git_commit"].endswith("-dirty") else "")
    lines = [
        README_BEGIN,
        "<!-- generated by `python -m benchmarks --readme`; edit benchmarks/, not this table -->",
        "",
        f"Measured {m['date'][:10]} with `{m['command']}` on {m['cpu']} ({m['cores']} cores), "
        f"device {m['device']}, torch {m['torch']}, torchdiffeq {m['torchdiffeq']}, "
        f"torchode {m['torchode'] or 'not installed'}, odenet {m['odenet']} ({commit}), "
        f"load average {load[0] if load else 'n/a'} before the run. Ratio = reference median / "
        "contender median: above 1 the contender is faster. Full table: "
        "`benchmarks/results/latest.json`; what each case measures: `benchmarks/README.md`.",
        "",
        "| benchmark | case | contender | reference | contender median | reference median | ratio | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    medians = {(r["benchmark"], r["case"], r["contender"]): r["median_s"] for r in table["results"]}
    for r in table["results"]:
        if r["contender"] == r["reference"]:
            continue
        target = "" if r["target"] is None else f"≥ {r['target']:.3g}: {'met' if r['met'] else 'not met'}"
        flag = " (noisy)" if r["noisy"] else ""
        if r["compile_s"] is not None:
            flag += f" (compile {r['compile_s']:.0f} s)"
        ref = medians[(r["benchmark"], r["case"], r["reference"])]
        lines.append(
            f"| {r['benchmark']} | {r['case']} | {r['contender']} | {r['reference']} "
            f"| {format_seconds(r['median_s'])}{flag} | {format_seconds(ref)} | **{r['ratio']:.2f}** | {target} |"
        )
    for s in table["skipped"]:
        lines.append(f"| {s['benchmark']} | {s['case']} | {s['contender']} | | skipped: {s['reason']} | | | |")
    lines += memory_section(table.get("memory"))
    lines += ["", README_END]
    return "\n".join(lines)


def memory_section(memory: dict[str, Any] | None) -> list[str]:
    """README lines for the memory benchmark: per model and mode, the largest N and the growth slope."""
    if not memory or not memory.get("records"):
        return []
    records = [r for r in memory["records"] if isinstance(r, dict) and r.get("status") == "ok"]
    slopes = {(f["model"], f["mode"]): f for f in memory.get("slopes", [])}
    lines = [
        "",
        "Peak memory of one training step (forward, loss, backward, SGD step) against the number of "
        "solver steps N, per memory mode: step RSS is the child process's peak resident memory above "
        "its RSS before the step; saved is what autograd holds for backward (exact, but blind to a "
        "checkpointed segment while it is recomputed). Slope: least-squares exponent of step RSS in N "
        "(1 linear, 0.5 square root, 0 flat).",
        "",
        "| model | mode | N | step RSS at largest N | saved at largest N | s/step at largest N "
        "| RSS slope (all N / 3 largest) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((r["model"], r["mode"]) for r in records):
        rows = sorted((r for r in records if (r["model"], r["mode"]) == key), key=lambda r: r["steps"])
        last, fit = rows[-1], slopes.get(key, {})
        top3 = fit.get("slope_top3")
        slope = (
            f"{fit['slope_all']:.2f} / {top3:.2f}"
            if fit and top3 is not None
            else (f"{fit['slope_all']:.2f}" if fit else "")
        )
        lines.append(
            f"| {key[0]} | {key[1]} | {rows[0]['steps']}–{last['steps']} | {last['memory_bytes'] / 2**20:.1f} MiB "
            f"| {last['saved_bytes'] / 2**20:.1f} MiB | {last['step_time_s']:.3g} | {slope} |"
        )
    added = memory.get("added")
    if added:
        lines += [
            "",
            f"Added to this table on {added['date']}: {added['what']}, by `{added['command']}`; {added['note']}.",
        ]
    if memory.get("figure"):
        lines += ["", f"![Memory and time per training step against depth, per memory mode]({memory['figure']})"]
    return lines


def rewrite_readme(readme: Path, table: dict[str, Any]) -> None:
    """Replace what lies between the performance markers of ``readme`` with the table."""
    text = readme.read_text(encoding="utf-8")
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{readme} has no {README_BEGIN} … {README_END} markers")
    readme.write_text(text[:begin] + readme_section(table) + text[end + len(README_END) :], encoding="utf-8")
