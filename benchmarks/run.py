"""Run odenet's benchmark suite: every benchmark, one process, one table.

    python -m benchmarks                      # everything; table → benchmarks/results/latest.json
    python benchmarks/run.py                  # the same
    python -m benchmarks --only rk4-loop      # one benchmark (repeatable)
    python -m benchmarks --quick              # smoke run: tiny sizes, 2 repeats
    python -m benchmarks --readme             # … and rewrite README.md's Performance table
    python -m benchmarks --from-table benchmarks/results/latest.json --readme   # no run

Each case warms its contenders up, then times them alternately, call by call, the order
flipped every round, and reports per contender the median, quartiles, minimum and
ratio = reference median / contender median (> 1: faster than the reference). The table
(JSON) carries the machine, versions, device, threads and load average before and after.
Exit status: 0, or 1 if a case failed its correctness check or raised.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script (python benchmarks/run.py): make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

# name → (module, function returning the cases, what it compares). "memory" is special:
# its module measures records (memory vs depth), not timings; it is optional.
REGISTRY: dict[str, tuple[str, str, str]] = {
    "resnet110": (
        "benchmarks.bench_resnet110",
        "cases",
        "training step of odenet's pre-activation ResNet-110 vs a hand-written PyTorch one (eager, compiled)",
    ),
    "rk4-loop": (
        "benchmarks.bench_rk4_loop",
        "rk4_cases",
        "100 fixed rk4 steps of an MLP field: odenet vs torchdiffeq (and torchode), forward and forward+backward",
    ),
    "heun-loop": (
        "benchmarks.bench_rk4_loop",
        "heun_cases",
        "200 fixed Heun steps of the same field: odenet vs torchdiffeq heun2 vs torchode Heun",
    ),
    "adaptive": (
        "benchmarks.bench_adaptive",
        "cases",
        "dopri5 (rtol 1e-6, atol 1e-8) through odenet vs direct torchdiffeq (and torchode); backprop and adjoint",
    ),
    "memory": ("benchmarks.bench_memory", "measure", "memory vs depth (records and a figure, no timings)"),
}
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "latest.json"
PARTIAL_OUT = ROOT / "benchmarks" / "results" / "partial.json"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run odenet's benchmarks and write one table (JSON).",
        epilog="Benchmarks: " + "; ".join(f"{k}: {v[2]}" for k, v in REGISTRY.items()),
    )
    parser.add_argument(
        "--only", action="append", choices=list(REGISTRY), metavar="NAME", help="run only this benchmark (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 2 repeats (numbers meaningless)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--repeats", type=int, help="timed calls per contender (default: each case's own)")
    parser.add_argument("--warmup", type=int, help="untimed calls per contender first (default: each case's own)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out torch.compile contenders")
    parser.add_argument(
        "--compile-resnet", action="store_true", help="also time compiled ResNet-110 training steps (slow to compile)"
    )
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (default inductor; eager for smoke tests)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the table (default {DEFAULT_OUT.relative_to(ROOT)}; with --only or --quick "
        f"{PARTIAL_OUT.relative_to(ROOT)})",
    )
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's Performance table from the table")
    parser.add_argument("--readme-path", type=Path, default=ROOT / "README.md", help=argparse.SUPPRESS)
    parser.add_argument("--from-table", type=Path, metavar="PATH", help="read this table instead of running")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    for name in ("threads", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.readme and args.from_table is None and (args.quick or args.only):
        parser.error("--readme needs a full run: leave out --quick and --only (or give --from-table)")
    if args.from_table is not None and not args.from_table.is_file():
        parser.error(f"--from-table {args.from_table}: no such file")
    return args


def _jsonable(value: Any) -> Any:
    """Records as JSON: numbers, strings, lists and dicts; NaN and inf become null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def run_memory(options: Any, table: dict[str, Any], out: Path) -> None:
    """The memory benchmark, if ``benchmarks/bench_memory.py`` exists: records and a figure."""
    try:
        module = importlib.import_module(REGISTRY["memory"][0])
    except ModuleNotFoundError as err:
        if err.name != REGISTRY["memory"][0]:
            raise
        note = "benchmarks/bench_memory.py is not there"
        print(f"\n[memory] skipped: {note}")
        table["skipped"].append({"benchmark": "memory", "case": "", "contender": "", "reason": note})
        return
    records = _jsonable(module.measure(quick=options.quick, device=options.device))
    entry: dict[str, Any] = {"records": records, "figure": None}
    if hasattr(module, "slopes"):  # growth exponents of memory against depth
        entry["slopes"] = _jsonable(module.slopes(records))
    if hasattr(module, "plot"):
        figure = out.with_name(out.stem + "-memory.png")
        module.plot(records, figure)
        where = figure.resolve()
        entry["figure"] = str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where)
    table["memory"] = entry
    print(f"\n[memory] {len(records)} records" + (f", figure {entry['figure']}" if entry["figure"] else ""))
    if hasattr(module, "table"):
        print(module.table(records))
    for record in records:
        if isinstance(record, dict) and record.get("status") in ("error", "timeout"):
            what = " ".join(str(record.get(k, "")) for k in ("model", "depth", "mode"))
            error = f"{what}: {record['status']} ({record.get('error', '')})"
            table["failures"].append({"benchmark": "memory", "case": what, "error": error})


def run_suite(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], bool]:
    """Every chosen benchmark, in one process; (the table, whether every case passed)."""
    import torch

    from benchmarks.suite import Options, compile_times, meta, print_case, race, rows
    from benchmarks.timing import load_average

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for but CUDA is not available")
    torch.set_num_threads(args.threads)
    options = Options(
        quick=args.quick,
        device=args.device,
        compile=args.compile,
        compile_resnet=args.compile_resnet,
        compile_backend=args.compile_backend,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
    )
    only = list(dict.fromkeys(args.only or REGISTRY))
    table: dict[str, Any] = {"meta": meta(options, argv, args.only or []), "results": [], "checks": []}
    table.update(skipped=[], failures=[])
    m = table["meta"]
    print(
        f"odenet {m['odenet']} ({m['git_commit'][:12]}), torch {m['torch']}, torchdiffeq {m['torchdiffeq']}, "
        f"torchode {m['torchode'] or 'not installed'}; {m['cpu']}, {m['cores']} cores, device {m['device']}, "
        f"load average {m['load_average_before']}"
    )
    for name in only:
        module_name, function, _ = REGISTRY[name]
        if name == "memory":
            try:
                run_memory(options, table, args.out)
            except Exception as err:  # one benchmark's failure must not lose the others' results
                traceback.print_exc()
                table["failures"].append({"benchmark": name, "case": "", "error": f"{type(err).__name__}: {err}"})
            continue
        torch.manual_seed(options.seed)
        try:
            cases = getattr(importlib.import_module(module_name), function)(options)
        except Exception as err:
            traceback.print_exc()
            table["failures"].append({"benchmark": name, "case": "", "error": f"{type(err).__name__}: {err}"})
            continue
        for case in cases:
            try:
                compiled = compile_times(case, options.torch_device)
                info = case.check() if case.check is not None else {}
                table["checks"].append({"benchmark": case.benchmark, "case": case.name, **_jsonable(info)})
                series = race(
                    case,
                    options.torch_device,
                    options.repeats or case.repeats,
                    case.warmup if options.warmup is None else options.warmup,
                )
                for contender, seconds in compiled.items():
                    series[contender].compile_s = seconds
            except Exception as err:
                traceback.print_exc()
                table["failures"].append(
                    {"benchmark": case.benchmark, "case": case.name, "error": f"{type(err).__name__}: {err}"}
                )
                continue
            case_rows = rows(case, series)
            table["results"] += case_rows
            table["skipped"] += [
                {"benchmark": case.benchmark, "case": case.name, "contender": c, "reason": why}
                for c, why in case.skipped
            ]
            print_case(case, case_rows, info)
        del cases
    m["load_average_after"] = load_average()
    return table, not table["failures"]


def summary(table: dict[str, Any]) -> None:
    """The ratios with targets, failures and skips, in a few lines."""
    print("\nsummary (ratio = reference median / contender median):")
    for r in table["results"]:
        if r["target"] is not None:
            verdict = "met" if r["met"] else "NOT met"
            noisy = "  WARNING: noisy" if r["noisy"] else ""
            print(
                f"  {r['benchmark']} / {r['case']}: {r['reference']} / {r['contender']} = {r['ratio']:.3f}"
                f"  (target ≥ {r['target']:.3g}: {verdict}){noisy}"
            )
    for f in table["failures"]:
        print(f"  FAILED {f['benchmark']} {f['case']}: {f['error']}")
    for s in table["skipped"]:
        print(f"  skipped {s['benchmark']} {s['case']} {s['contender']}: {s['reason']}")
    print(f"  load average before {table['meta']['load_average_before']}, after {table['meta']['load_average_after']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.list:
        for name, (_, _, what) in REGISTRY.items():
            print(f"{name:>10}: {what}")
        return 0
    from benchmarks.suite import rewrite_readme, write_table

    if args.from_table is not None:
        table = json.loads(args.from_table.read_text(encoding="utf-8"))
        if args.readme and (table["meta"]["quick"] or table["meta"]["only"]):
            raise SystemExit(f"error: {args.from_table} is a --quick or --only table; the README needs a full run")
        ok = not table["failures"]
    else:
        args.out = args.out or (PARTIAL_OUT if args.quick or args.only else DEFAULT_OUT)
        table, ok = run_suite(args, argv)
        write_table(table, args.out)
        summary(table)
        print(f"table written to {args.out}")
    if args.readme:
        rewrite_readme(args.readme_path, table)
        print(f"{args.readme_path}: Performance table rewritten")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
