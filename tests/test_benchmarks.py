"""The benchmark suite (``python -m benchmarks``): smoke runs, its table, its arithmetic.

No timing is asserted (timings depend on the machine); what is asserted: every case runs
in ``--quick`` mode and passes its correctness checks (contenders doing the same method
agree, make the same number of field evaluations); the table has the required metadata
and one well-formed row per contender, with ratio = reference median / contender median;
the race alternates contenders and times a compile apart; torchode contenders and the
memory benchmark are skipped cleanly when missing; the README table is rewritten between
its markers only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from benchmarks import bench_adaptive, bench_rk4_loop, common, run, suite
from benchmarks.suite import README_BEGIN, README_END, Case, Contender, Options, Series, compile_times, race, rows

ROOT = Path(__file__).resolve().parents[1]
TIMED = ["resnet110", "rk4-loop", "heun-loop", "adaptive"]
CASES = {
    ("resnet110", "train-step"),
    ("rk4-loop", "forward"),
    ("rk4-loop", "forward+backward"),
    ("heun-loop", "forward"),
    ("heun-loop", "forward+backward"),
    ("adaptive", "forward"),
    ("adaptive", "forward+backward"),
    ("adaptive", "adjoint"),
}
META = {
    "date", "command", "machine", "cpu", "cores", "python", "torch", "torchdiffeq", "torchode", "odenet",
    "git_commit", "device", "threads", "quick", "load_average_before", "load_average_after",
}  # fmt: skip
ROW = {
    "benchmark", "case", "contender", "reference", "median_s", "q1_s", "q3_s", "min_s", "n", "ratio",
    "target", "met", "noisy", "compile_s", "nfe",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: one thread, so that a loaded machine's other work does not stall them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _main(argv: list[str]) -> int:
    threads = torch.get_num_threads()
    try:
        return run.main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[int, dict, Path]:
    """One smoke run of every timed benchmark (compiled contenders traced by the eager backend)."""
    out = tmp_path_factory.mktemp("bench") / "table.json"
    argv = ["--quick", "--threads", "1", "--compile-backend", "eager", "--out", str(out)]
    for name in TIMED:
        argv += ["--only", name]
    code = _main(argv)
    return code, json.loads(out.read_text(encoding="utf-8")), out


def test_the_quick_suite_runs_every_case_and_writes_one_table(quick):
    code, table, _ = quick
    assert code == 0 and table["failures"] == [], table["failures"]
    assert META <= set(table["meta"]) and table["meta"]["quick"] is True and table["meta"]["threads"] == 1
    assert table["meta"]["only"] == TIMED and table["meta"]["torch"] == str(torch.__version__)
    assert {(r["benchmark"], r["case"]) for r in table["results"]} == CASES
    for r in table["results"]:
        assert ROW <= set(r), r
        assert r["n"] == 2 and 0 < r["min_s"] <= r["q1_s"] <= r["median_s"] <= r["q3_s"]
        ref = next(
            x for x in table["results"] if (x["benchmark"], x["case"], x["contender"]) == (*_key(r), r["reference"])
        )
        assert r["ratio"] == pytest.approx(ref["median_s"] / r["median_s"], rel=1e-12)
        assert r["met"] is (None if r["target"] is None else r["ratio"] >= r["target"])
        assert r["noisy"] is (r["q3_s"] / r["q1_s"] > 1.2)
    # The targets of the issue, on the contenders they are about.
    targets = {(r["benchmark"], r["contender"]): r["target"] for r in table["results"] if r["target"] is not None}
    assert targets[("resnet110", "odenet")] == 0.97
    assert targets[("rk4-loop", "odenet rk4")] == targets[("rk4-loop", "odenet rk4 (compiled)")] == 1.5
    assert targets[("adaptive", "odenet dopri5")] == pytest.approx(1 / 1.05)


def _key(row: dict) -> tuple[str, str]:
    return row["benchmark"], row["case"]


def test_the_contenders_agree_before_they_are_timed(quick):
    _, table, _ = quick
    checks = {_key(c): c for c in table["checks"]}
    assert set(checks) == CASES
    rk4 = checks[("rk4-loop", "forward")]
    # torchdiffeq's "rk4" is the 3/8 rule: odenet's rk38 reproduces it in float64, and
    # odenet's classic rk4 reproduces torchode's classic RK4; across the two methods the
    # difference is the methods' own, orders of magnitude above rounding.
    assert rk4["float64 max|odenet rk38 − torchdiffeq rk4|/max|torchdiffeq rk4|"] < 1e-12
    if table["meta"]["torchode"] is not None:  # an optional contender (the 'bench' extra)
        assert rk4["float64 max|torchode rk4 − odenet rk4|/max|odenet rk4|"] < 1e-12
    assert rk4["float64 max|contender − reference|/max|reference|"]["odenet rk4"] > 1e-11
    assert set(rk4["field evaluations per solve"].values()) == {40}  # 10 steps × 4 stages
    assert set(checks[("heun-loop", "forward")]["field evaluations per solve"].values()) == {40}  # 20 × 2
    for case in ("forward", "forward+backward", "adjoint"):
        nfe = checks[("adaptive", case)]["field evaluations per call"]
        assert nfe["odenet dopri5"] == nfe["torchdiffeq dopri5"] > 0
    assert checks[("resnet110", "train-step")]["max |Δlogit| at init"] < 1e-3
    assert checks[("resnet110", "train-step")]["parameters"] == 269_722  # ResNet-20 in --quick


def test_compiled_contenders_report_their_compile_time_apart(quick):
    _, table, _ = quick
    traced = ("odenet rk4 (compiled)", "odenet rk4 (compile_steps)")
    compiled = [r for r in table["results"] if r["contender"] in traced]
    assert len(compiled) == 4 and all(r["compile_s"] > 0 for r in compiled)
    assert all(r["compile_s"] is None for r in table["results"] if r["contender"] not in traced)


def test_ratio_is_reference_over_contender_and_noise_is_flagged():
    case = Case(
        "b", "c", "", "ref", (Contender("ref", lambda: None), Contender("fast", lambda: None)), 4, 0, {"fast": 1.5}
    )
    series = {"ref": Series([2.0, 2.0, 2.0, 2.0]), "fast": Series([1.0, 1.0, 1.0, 1.6])}
    by_name = {r["contender"]: r for r in rows(case, series)}
    assert by_name["ref"]["ratio"] == 1.0 and by_name["ref"]["target"] is None
    fast = by_name["fast"]
    assert fast["median_s"] == 1.0 and fast["ratio"] == 2.0 and fast["met"] is True
    assert fast["q1_s"] == 1.0 and fast["q3_s"] == pytest.approx(1.15) and not fast["noisy"]
    assert fast["ratio_of_minima"] == 2.0 and fast["paired_ratio"] == 2.0
    series["fast"] = Series([1.0, 1.0, 2.0, 2.0])
    assert rows(case, series)[1]["noisy"]  # inclusive quartiles 1.0 and 2.0


def test_the_race_alternates_the_contenders_and_compiles_first():
    calls: list[str] = []
    case = Case(
        "b",
        "c",
        "",
        "a",
        (Contender("a", lambda: calls.append("a")), Contender("b", lambda: calls.append("b"), compiled=True)),
        repeats=3,
        warmup=1,
    )
    assert set(compile_times(case, torch.device("cpu"))) == {"b"} and calls == ["b"]
    series = race(case, torch.device("cpu"), repeats=3, warmup=1)
    # warm-up a b; rounds: a b, b a, a b (the order flips every round)
    assert calls[1:] == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert len(series["a"].times) == len(series["b"].times) == 3


def test_torchode_contenders_are_skipped_cleanly_without_torchode(monkeypatch, tmp_path):
    for module in (common, bench_rk4_loop, bench_adaptive, suite):
        monkeypatch.setattr(module, "torchode", None)
    options = Options(quick=True, compile=False)
    for cases in (bench_rk4_loop.rk4_cases(options), bench_adaptive.cases(options)):
        for case in cases:
            names = [c.name for c in case.contenders]
            assert not [n for n in names if "torchode" in n]
            (skipped,) = [s for s in case.skipped if "torchode" in s[0]]
            assert skipped[1] == common.TORCHODE_MISSING
        check = cases[0].check
        assert check is not None
        info = check()  # the remaining contenders still agree
        assert "torchode" not in json.dumps(info)
    out = tmp_path / "t.json"
    assert _main(["--quick", "--no-compile", "--only", "heun-loop", "--threads", "1", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["meta"]["torchode"] is None and table["failures"] == []
    assert {r["contender"] for r in table["results"]} == {"odenet heun", "torchdiffeq heun2"}
    assert [(s["case"], s["contender"]) for s in table["skipped"]] == [
        ("forward", "torchode heun"),
        ("forward+backward", "torchode heun"),
    ]


def test_a_failed_check_is_recorded_and_the_exit_status_is_1(tmp_path, monkeypatch):
    def cases(options):
        def check():
            raise AssertionError("the contenders disagree")

        return [Case("broken", "c", "", "a", (Contender("a", lambda: None),), 1, 0, check=check)]

    monkeypatch.setitem(sys.modules, "fake_broken_bench", types.SimpleNamespace(cases=cases))
    monkeypatch.setitem(run.REGISTRY, "rk4-loop", ("fake_broken_bench", "cases", ""))
    out = tmp_path / "t.json"
    assert _main(["--only", "rk4-loop", "--threads", "1", "--out", str(out)]) == 1
    table = json.loads(out.read_text())
    assert table["failures"] == [
        {"benchmark": "broken", "case": "c", "error": "AssertionError: the contenders disagree"}
    ]
    assert table["results"] == []


def test_the_memory_benchmark_is_called_if_present_and_skipped_if_not(tmp_path, monkeypatch):
    plotted = []
    fake = types.SimpleNamespace(
        measure=lambda quick, device: [{"model": "mlp", "depth": 10, "status": "ok", "memory_bytes": 1.0}],
        plot=lambda records, path: plotted.append(Path(path)),
    )
    monkeypatch.setitem(sys.modules, "fake_bench_memory", fake)
    monkeypatch.setitem(run.REGISTRY, "memory", ("fake_bench_memory", "measure", ""))
    out = tmp_path / "t.json"
    assert _main(["--only", "memory", "--quick", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["memory"]["records"] == [{"model": "mlp", "depth": 10, "status": "ok", "memory_bytes": 1.0}]
    assert plotted == [tmp_path / "t-memory.png"]

    monkeypatch.setitem(run.REGISTRY, "memory", ("benchmarks.no_such_module", "measure", ""))
    assert _main(["--only", "memory", "--quick", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert "memory" not in table and [s["benchmark"] for s in table["skipped"]] == ["memory"]


def test_the_readme_table_is_rewritten_between_its_markers_only(quick, tmp_path):
    _, table, path = quick
    readme = tmp_path / "README.md"
    readme.write_text(f"# odenet\n\n## Performance\n\nintro\n\n{README_BEGIN}\nold\n{README_END}\n\n## Citing\n")
    table = {**table, "meta": {**table["meta"], "quick": False, "only": []}}
    full = tmp_path / "full.json"
    full.write_text(json.dumps(table))
    assert _main(["--from-table", str(full), "--readme", "--readme-path", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# odenet\n\n## Performance\n\nintro\n\n" + README_BEGIN) and "old" not in text
    assert text.endswith(README_END + "\n\n## Citing\n")
    for r in table["results"]:
        if r["contender"] != r["reference"]:
            assert f"| {r['benchmark']} | {r['case']} | {r['contender']} | {r['reference']} |" in text
            assert f"**{r['ratio']:.2f}**" in text
    # Quick or partial tables never reach the README.
    with pytest.raises(SystemExit, match="full run"):
        _main(["--from-table", str(path), "--readme", "--readme-path", str(readme)])
    with pytest.raises(SystemExit) as info:
        _main(["--quick", "--readme"])
    assert info.value.code == 2


def test_the_project_readme_has_the_markers():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    begin, end = text.find(README_BEGIN), text.find(README_END)
    assert 0 < begin < end and text.rfind("## Performance", 0, begin) > 0


@pytest.mark.parametrize("command", [["-m", "benchmarks"], ["benchmarks/run.py"]])
def test_both_entry_points_work(command):
    result = subprocess.run(
        [sys.executable, *command, "--list"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    listed = [line.split(":")[0].strip() for line in result.stdout.splitlines()]
    assert listed == list(run.REGISTRY)
