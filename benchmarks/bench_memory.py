"""Peak memory and time of one training step against depth, per memory mode of ``ODEBlock``.

A residual network of N steps stores N states for the backward pass when it is trained
by backpropagation: O(N) memory (Chen et al. 2018, Table 1). ``memory="checkpoint"``
keeps about √N segment boundaries and recomputes each segment in the backward pass
(Chen, Xu, Zhang & Guestrin 2016, "Training deep nets with sublinear memory cost"):
O(√N) memory for one extra forward pass. ``memory="adjoint"`` solves the adjoint ODE
backwards on the same fixed grid (torchdiffeq's ``odeint_adjoint``) and stores no state
inside a solve: O(1) in N for a field with shared weights (one solve); with per-step
weights odenet makes one solve per step (see ``mlp_shared`` below). This script measures
all three.

One configuration is (model, depth, memory mode):

* ``resnet``: ``odenet.models.cifar_resnet(depth, solver="euler", block="preact", memory=m)``
  on a random CIFAR-shaped batch (batch, 3, 32, 32), depths 20 … 434 (1202: --extended); its three
  stages are three ODE blocks of n, n − 1, n − 1 Euler steps plus two transitions, so
  N = 3n − 2 solver steps for depth 6n + 2.
* ``mlp``: ``odenet.models.mlp_resnet(64, 10, depth=N, width=64, step_size=1/N, memory=m)``
  on a random batch (128, 64): one ODE block of N Euler steps over a ``StepwiseField``
  (one weight set per step, a discrete ResNet), N = 10 … 10,000. The horizon is 1
  (h = 1/N) so that the state stays finite at N = 10,000 (with h = 1 and no
  normalisation the logits reach 1e33 by N = 3000); memory and time do not depend on h.
* ``mlp_shared``: the same with ``weights="shared"``: one weight set for all N steps,
  the autonomous ODE of Chen et al. (2018). The adjoint is O(1) here only: with per-step
  weights odenet's adjoint solves one step per ``odeint_adjoint`` call (one call over
  all steps would carry the adjoints of all N weight sets in its state), and each call
  keeps its solution at both ends, so its memory grows like N as well.

Each configuration runs in two child processes of its own, so that its memory is its
own: forked from a ``multiprocessing`` fork server that has imported torch and odenet
once (a child starts in a fraction of a second, not the ~3 s of a fresh interpreter),
running this file with ``runpy``. Each child builds the model and the batch and takes one
warm-up training step (forward, mean cross-entropy, backward, plain SGD step without
momentum, so the optimiser holds no state). The *memory* child then reports, in bytes:

* ``rss_step_bytes``: peak resident memory during one more step minus the resident
  memory just before it. The gradient buffers already exist then (``zero_grad(
  set_to_none=False)`` keeps them), free heap is returned to the system first
  (``malloc_trim``) and the kernel's high-water mark is reset (``/proc/self/clear_refs``),
  so this is the working memory of a step: activations, recomputation, the adjoint's
  state — not the interpreter, torch, the weights or their gradients. This child asks
  glibc, before it allocates anything, to map every allocation of 16 KiB or more on its
  own (``mallopt``), so that freed memory leaves the resident set at once instead of
  staying in a fragmented heap (under the default policy a checkpointed step of the
  shared-weight MLP at N = 1000 peaks at 84–87 MiB, against 8–9 MiB this way).
* ``rss_first_step_bytes``: the same for the warm-up step, measured from the resident
  memory after building the model and batch; it includes allocating the gradients
  (4 bytes per parameter), which grows like N in every mode with per-step weights.
* ``saved_bytes``: ``odenet.memory.saved_activation_peak``: the exact peak of the
  tensors autograd holds for the backward pass (deterministic; parameters excluded).
  Under ``checkpoint`` it sees the segment inputs (one state per segment) but not the
  activations of the one segment being recomputed: ``torch.utils.checkpoint`` keeps
  those in its own frame, outside ``saved_tensors_hooks``. Both terms are ∝ √N; the
  resident memory includes both.

The *time* child (default allocator: the mapping above costs a system call and page
faults per allocation, up to 2–3× the step time of the MLP) takes k timed steps:

* ``step_time_s``: their median (CUDA timings are bracketed by ``torch.cuda.synchronize``).
* ``rss_step_heap_bytes``: peak resident memory over the timed steps, under glibc's
  default allocation policy: what an ordinary process sees, heap fragmentation included.
* ``cuda_step_bytes`` (CUDA only): ``torch.cuda.max_memory_allocated`` over the timed
  steps minus the memory allocated before them.

Children use one intra-op thread (``torch.set_num_threads(1)``) so that timings do not
depend on what else runs on the machine's other cores. For each (model, mode) the
growth exponent is the slope of log(memory) against log(N) (least squares); expected:
≈ 1 for backprop, ≈ 0.5 for checkpoint, ≈ 0 for adjoint with shared weights (≈ 1 with
per-step weights). Fixed costs (stem, transitions, head, the batch itself) pull the
slopes down at small N, hence also the fit over the three largest N.

Run:
    python benchmarks/bench_memory.py                    # full grid, ~12 min on 2 busy cores
    python benchmarks/bench_memory.py --extended         # + ResNet-1202, slow modes at N = 10,000
    python benchmarks/bench_memory.py --quick            # MLPs at N = 10, 100 and ResNet-20
    python benchmarks/bench_memory.py --device cuda
    python benchmarks/bench_memory.py --out benchmarks/results/memory.json --figure benchmarks/figures/memory.png
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import inspect
import json
import multiprocessing
import os
import platform
import re
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CHILD = "__bench_memory_child__"  # the module name a child runs this file under
ROOT = HERE.parent
MODES = ("backprop", "checkpoint", "adjoint")
MODELS = ("resnet", "mlp", "mlp_shared")
# What the fork server imports once, so that every child starts warm (torch.optim imports
# torch._dynamo on first use: ~4 s per child otherwise).
PRELOAD = ["numpy", "torch", "torch._dynamo", "torchdiffeq", "odenet", "odenet.models", "odenet.memory"]
UNITS = {
    "rss_step_bytes": "bytes",
    "rss_first_step_bytes": "bytes",
    "rss_step_heap_bytes": "bytes",
    "mmap_threshold_bytes": "bytes",
    "saved_bytes": "bytes",
    "cuda_step_bytes": "bytes",
    "param_bytes": "bytes",
    "memory_bytes": "bytes",
    "step_time_s": "seconds",
    "step_times_s": "seconds",
    "build_time_s": "seconds",
}
MLP_FEATURES, MLP_CLASSES, MLP_WIDTH = 64, 10, 64
DEFAULT_TIMEOUT = 300.0  # seconds per child process (build, warm-up, then its measurements)
EXTENDED_TIMEOUT = 1200.0  # the same for --extended, whose deepest child takes 4 steps of ~100 s
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 16 * 1024  # bytes: allocations this large get their own mapping in the memory child
PARTS = ("memory", "time")  # the two child processes of a configuration


@dataclass(frozen=True)
class Config:
    """One measurement: a model of a given depth trained under one memory mode.

    depth: the ResNet's depth 6n+2, or the MLP's number of steps N.
    batch: images (resnet) or vectors (mlp) per step; timed_steps: k.
    """

    model: str
    depth: int
    mode: str
    batch: int
    timed_steps: int
    device: str = "cpu"
    threads: int = 1


def grid(quick: bool = False, device: str = "cpu", extended: bool = False) -> list[Config]:
    """The configurations, cheapest first within each (model, mode).

    The default grid took 700 s on 2 cores that other work kept busy (load ~4).
    ``extended`` adds what would double that or more: ResNet-1202, and the per-step MLP at
    N = 10,000 under checkpoint (~30 s a step) and adjoint (one ``odeint_adjoint`` call per
    step: ~100 s a step; its children get ``EXTENDED_TIMEOUT``).
    """
    every, cheap = MODES, ("backprop",)
    # (depth, batch, timed steps k, modes)
    if quick:
        resnet = [(20, 8, 1, every)]
        mlp = shared = [(10, 128, 2, every), (100, 128, 2, every)]
    else:
        deep = every if extended else cheap
        resnet = [(20, 16, 3, every), (56, 16, 3, every), (110, 16, 2, every), (218, 16, 1, every)]
        resnet += [(434, 16, 1, every)] + ([(1202, 16, 1, every)] if extended else [])
        mlp = [(10, 128, 5, every), (100, 128, 3, every), (1000, 128, 2, every), (3000, 128, 1, every)]
        mlp += [(10_000, 128, 1, deep)]
        shared = [(10, 128, 5, every), (100, 128, 3, every), (1000, 128, 2, every), (10_000, 128, 1, every)]
    return [
        Config(model, depth, mode, batch, k, device)
        for model, sizes in (("mlp", mlp), ("mlp_shared", shared), ("resnet", resnet))
        for mode in MODES
        for depth, batch, k, modes in sizes
        if mode in modes
    ]


def memory_supported() -> bool:
    """Whether this odenet has the ``memory=`` option on ``ODEBlock`` and the model builders."""
    import odenet
    from odenet.models import cifar_resnet, mlp_resnet

    return all("memory" in inspect.signature(f).parameters for f in (odenet.ODEBlock, cifar_resnet, mlp_resnet))


# ------------------------------------------------------------------------- the child process
def _status_kib(field: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/self/status in KiB."""
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _rss() -> int:
    return _status_kib("VmRSS") * 1024


def _hwm() -> int:
    return _status_kib("VmHWM") * 1024


def _libc() -> Any:
    """glibc, for malloc_trim and mallopt (None elsewhere: the RSS numbers are then coarser)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _reset_hwm() -> None:
    """Give freed heap back to the system, then make the high-water mark the current RSS."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # "5" resets VmHWM to VmRSS (Linux ≥ 4.0)


def _map_large_allocations() -> bool:
    """Serve every allocation of ≥ MMAP_THRESHOLD bytes by its own mmap, returned on free.

    glibc otherwise serves a tensor of, say, 32 KiB from its heap, where freed and
    fragmented chunks keep pages resident: a checkpointed step of the shared-weight MLP at
    N = 1000 then peaks at 84–87 MiB against 8–9 MiB with this switched on. With a fixed threshold the
    resident memory follows the live tensors (to a page), at the cost of a system call
    per allocation, which is why the timed steps run before this is switched on.
    """
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def build(config: Config) -> Any:
    """The model of a configuration (``memory=`` passed only when it is not backprop)."""
    from odenet.models import cifar_resnet, mlp_resnet

    kwargs: dict[str, Any] = {}
    if config.mode != "backprop":
        if not memory_supported():
            raise RuntimeError(f"this odenet has no memory= option: cannot build memory={config.mode!r}")
        kwargs["memory"] = config.mode
    if config.model == "resnet":
        return cifar_resnet(config.depth, solver="euler", block="preact", **kwargs)
    if config.model in ("mlp", "mlp_shared"):
        weights = "shared" if config.model == "mlp_shared" else "per_step"
        h = 1.0 / config.depth
        return mlp_resnet(
            MLP_FEATURES, MLP_CLASSES, depth=config.depth, width=MLP_WIDTH, step_size=h, weights=weights, **kwargs
        )
    raise ValueError(f"unknown model {config.model!r}; choose one of {MODELS}")


def run_config(config: Config, part: str) -> dict[str, Any]:
    """Measure one configuration in this process (meant for a fresh child process).

    part ``"memory"``: resident memory of the first and of a later step, and the saved-
    tensor peak, with large allocations mapped one by one (``_map_large_allocations``,
    switched on before anything is allocated). part ``"time"``: k timed steps under the
    default allocator, and on CUDA the allocator's peak over them.
    """
    if part == "memory":
        mapped = _map_large_allocations()
    import torch
    import torch.nn.functional as F

    from odenet.blocks import ode_blocks
    from odenet.memory import saved_activation_peak
    from odenet.models.common import Transition

    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    device = torch.device(config.device)
    cuda = device.type == "cuda"

    t0 = time.perf_counter()
    model = build(config).to(device).train()
    build_time = time.perf_counter() - t0
    if config.model == "resnet":
        x = torch.randn(config.batch, 3, 32, 32, device=device)
    else:
        x = torch.randn(config.batch, MLP_FEATURES, device=device)
    y = torch.randint(0, 10, (config.batch,), device=device)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)  # no momentum: no optimiser state

    def step() -> float:
        optimiser.zero_grad(set_to_none=False)  # keep the gradient buffers from step to step
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    blocks = list(ode_blocks(model))
    _reset_hwm()
    before = _rss()
    loss = step()  # warm-up: allocates the gradients, fills caches
    sync()
    first = _hwm() - before

    if part == "time":
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            allocated = torch.cuda.memory_allocated(device)
        _reset_hwm()
        before = _rss()
        times = []
        for _ in range(config.timed_steps):
            sync()
            t = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t)
        return {
            "rss_step_heap_bytes": _hwm() - before,
            "cuda_step_bytes": int(torch.cuda.max_memory_allocated(device)) - allocated if cuda else None,
            "step_times_s": times,
            "step_time_s": statistics.median(times),
            "build_time_s": build_time,
            "nfe": [(b.nfe_forward, b.nfe_backward) for b in blocks],
        }

    _reset_hwm()
    before = _rss()
    step()
    sync()
    rss_step = _hwm() - before
    # After the measured step: the copy this makes and frees leaves the heap fragmented,
    # which would add ~15 MiB to the next step of the checkpointed MLP at N = 3000.
    saved = saved_activation_peak(model, x, y)
    return {
        "steps": sum(b.steps for b in blocks),
        "ode_blocks": len(blocks),
        "transitions": sum(isinstance(m, Transition) for m in model.modules()),
        "segments": sum(len(b.segments()) for b in blocks) if config.mode == "checkpoint" else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "loss": loss,
        "mmap_threshold_bytes": MMAP_THRESHOLD if mapped else None,
        "rss_first_step_bytes": first,
        "rss_step_bytes": rss_step,
        "saved_bytes": saved,
    }


def _child(argument: str, part: str, out: str) -> None:
    """The child's entry: measure one part of a configuration (JSON) and write the record to ``out``."""
    config = Config(**json.loads(argument))
    # Everything inherited from the fork server (torch, odenet) is permanent: each gc.collect
    # then scans only this child's objects (0.3 s → milliseconds), and touches no shared pages.
    gc.freeze()
    try:
        record = {**asdict(config), **run_config(config, part), "status": "ok"}
    except Exception as error:  # reported to the parent, which goes on with the next configuration
        record = {**asdict(config), "status": "error", "error": f"{type(error).__name__}: {error}"}
        record["traceback"] = traceback.format_exc()
    Path(out).write_text(json.dumps(record))


# ------------------------------------------------------------------------- the parent process
def metadata(device: str = "cpu") -> dict[str, Any]:
    """Machine, versions and load: what a reader needs to put the numbers in context."""
    import torch
    import torchdiffeq

    import odenet

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        load = "n/a"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchdiffeq": torchdiffeq.__version__,
        "odenet": odenet.__version__,
        "git_commit": commit,
        "child_threads": 1,
        "load_average_1min": load,
        "memory_option": memory_supported(),
    }


def _context() -> Any:
    """A fork-server context that has imported torch and odenet (no torch threads yet: safe to fork)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def measure_config(config: Config, timeout: float = DEFAULT_TIMEOUT, context: Any = None) -> dict[str, Any]:
    """Measure one configuration: its memory in one fresh child process, its time in another."""
    context = context or _context()
    record: dict[str, Any] = {}
    for part in PARTS:
        result = _run_child(config, part, timeout, context)
        if result["status"] != "ok":
            return {**result, "part": part}
        record.update(result)
    record["memory_bytes"] = (
        record["cuda_step_bytes"] if record["cuda_step_bytes"] is not None else record["rss_step_bytes"]
    )
    return record


def _run_child(config: Config, part: str, timeout: float, context: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        out = Path(tmp) / "record.json"
        child = context.Process(
            target=runpy.run_path,
            args=(str(Path(__file__).resolve()),),
            kwargs={"init_globals": {"_BENCH_CHILD": (json.dumps(asdict(config)), part, str(out))}, "run_name": CHILD},
        )
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            return {**asdict(config), "status": "timeout", "error": f"no result within {timeout:g} s"}
        if out.exists():
            return dict(json.loads(out.read_text()))
    # Killed from outside (out of memory: exit code -9) or crashed in C++.
    return {**asdict(config), "status": "error", "error": f"child exited with code {child.exitcode} and no record"}


def measure(
    quick: bool = False,
    device: str = "cpu",
    *,
    extended: bool = False,
    configs: Sequence[Config] | None = None,
    timeout: float | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Measure every configuration of the grid, in two child processes each (memory, time).

    ``timeout``: seconds per child (``DEFAULT_TIMEOUT``, ``EXTENDED_TIMEOUT`` when
    ``extended``). Modes the installed odenet lacks are recorded with status ``"unsupported"``; after a
    configuration fails or times out, the deeper ones of the same (model, mode) are
    recorded as ``"skipped"`` rather than run. Each record carries the metadata
    (machine, versions); units are in ``UNITS``.
    """
    timeout = timeout or (EXTENDED_TIMEOUT if extended else DEFAULT_TIMEOUT)
    meta = metadata(device)
    supported = meta["memory_option"]
    context = _context()
    records = []
    failed: set[tuple[str, str]] = set()
    for config in configs if configs is not None else grid(quick, device, extended):
        key = (config.model, config.mode)
        if config.mode != "backprop" and not supported:
            record = {**asdict(config), "status": "unsupported", "error": "odenet.ODEBlock has no memory= option"}
        elif key in failed:
            record = {**asdict(config), "status": "skipped", "error": "a shallower configuration failed"}
        else:
            record = measure_config(config, timeout, context)
            if record["status"] != "ok":
                failed.add(key)
        record.update(meta)
        records.append(record)
        if verbose:
            print(_line(record), flush=True)
    return records


# ------------------------------------------------------------------------- analysis and report
def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**20:.2f}"


def _line(r: dict[str, Any]) -> str:
    head = f"{r['model']:>6} depth {r['depth']:>5} {r['mode']:>10}"
    if r["status"] != "ok":
        return f"{head}: {r['status']} ({r.get('error', '')})"
    return (
        f"{head}: N={r['steps']:>5}  step {_mib(r['rss_step_bytes'])} MiB RSS, "
        f"saved {_mib(r['saved_bytes'])} MiB, {r['step_time_s']:.3f} s/step"
    )


def slopes(records: Sequence[dict[str, Any]], key: str = "memory_bytes") -> list[dict[str, Any]]:
    """Least-squares slope of log(record[key]) against log(N) for each (model, mode).

    ``slope_all`` over every successful depth; ``slope_top3`` over the three largest N,
    where fixed costs (stem, transitions, head, the batch) weigh least.
    """
    out = []
    for model in MODELS:
        for mode in MODES:
            points = sorted(
                (r["steps"], r[key])
                for r in records
                if r["model"] == model and r["mode"] == mode and r["status"] == "ok" and (r.get(key) or 0) > 0
            )
            if len(points) < 2:
                continue
            n, m = np.log([p[0] for p in points]), np.log([p[1] for p in points])
            fit = {"model": model, "mode": mode, "quantity": key, "points": len(points)}
            fit["slope_all"] = float(np.polyfit(n, m, 1)[0])
            fit["slope_top3"] = float(np.polyfit(n[-3:], m[-3:], 1)[0]) if len(points) >= 3 else None
            out.append(fit)
    return out


def table(records: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of every record (MiB = 2²⁰ bytes)."""
    cuda = any(r.get("cuda_step_bytes") is not None for r in records)
    head = ["model", "depth", "N steps", "params", "mode", "step RSS MiB", "first-step RSS MiB", "saved MiB"]
    head += ["step RSS, default heap MiB"]
    head += ["CUDA peak MiB"] if cuda else []
    head += ["s/step", "status"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        ok = r["status"] == "ok"
        cells = [
            r["model"],
            str(r["depth"]),
            str(r.get("steps", "—")),
            f"{r['parameters']:,}" if ok else "—",
            r["mode"],
        ]
        cells += [_mib(r.get("rss_step_bytes")), _mib(r.get("rss_first_step_bytes")), _mib(r.get("saved_bytes"))]
        cells += [_mib(r.get("rss_step_heap_bytes"))]
        cells += [_mib(r.get("cuda_step_bytes"))] if cuda else []
        cells += [f"{r['step_time_s']:.3f}" if ok else "—", r["status"]]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def slope_table(records: Sequence[dict[str, Any]]) -> str:
    rows = ["| model | mode | quantity | points | slope (all N) | slope (3 largest N) |", "|---|---|---|---|---|---|"]
    keys = ["memory_bytes", "saved_bytes", "step_time_s"]
    for fit in [f for key in keys for f in slopes(records, key)]:
        top = "—" if fit["slope_top3"] is None else f"{fit['slope_top3']:.2f}"
        rows.append(
            f"| {fit['model']} | {fit['mode']} | {fit['quantity']} | {fit['points']} | {fit['slope_all']:.2f} | {top} |"
        )
    return "\n".join(rows)


def plot(records: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Peak step memory (top) and time per step (bottom) against N, one column per model.

    Solid lines: the measured peak (CPU resident memory, or the CUDA allocator's peak);
    dashed: the tensors autograd saves for backward. Log–log axes, one colour per mode;
    the slope of log memory against log N is in each title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ok = [r for r in records if r["status"] == "ok"]
    cuda = any(r.get("cuda_step_bytes") is not None for r in ok)
    models = [m for m in MODELS if any(r["model"] == m for r in ok)] or list(MODELS)
    colours = {"backprop": "tab:red", "checkpoint": "tab:blue", "adjoint": "tab:green"}
    names = {
        "resnet": "CIFAR ResNet (pre-activation, Euler, h = 1)",
        "mlp": "MLP ResNet, per-step weights (h = 1/N)",
        "mlp_shared": "MLP ODE, shared weights (h = 1/N)",
    }
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 9), sharex="col", squeeze=False)
    for col, model in enumerate(models):
        mem_ax, time_ax = axes[0, col], axes[1, col]
        batches = sorted({r["batch"] for r in ok if r["model"] == model})
        for mode in MODES:
            rs = sorted((r for r in ok if r["model"] == model and r["mode"] == mode), key=lambda r: r["steps"])
            if not rs:
                continue
            n = [r["steps"] for r in rs]
            c = colours[mode]
            mem_ax.plot(n, [r["memory_bytes"] / 2**20 for r in rs], "o-", color=c, label=f"{mode}: measured")
            mem_ax.plot(n, [r["saved_bytes"] / 2**20 for r in rs], "s--", color=c, alpha=0.5, label=f"{mode}: saved")
            time_ax.plot(n, [r["step_time_s"] for r in rs], "o-", color=c, label=mode)
            if model == "resnet" and mode == "backprop":
                for r in rs:
                    mem_ax.annotate(f"ResNet-{r['depth']}", (r["steps"], r["memory_bytes"] / 2**20), fontsize=7)
        fits = {f["mode"]: f["slope_all"] for f in slopes(ok) if f["model"] == model}
        note = ", ".join(f"{m} {s:.2f}" for m, s in fits.items())
        mem_ax.set_title(
            f"{names[model]}, batch {', '.join(map(str, batches))}\nslope of log memory: {note}", fontsize=9
        )
        what = "CUDA max_memory_allocated" if cuda else "peak RSS"
        mem_ax.set_ylabel(f"working memory of a step ({what}) [MiB]")
        time_ax.set_ylabel("time per training step [s]")
        time_ax.set_xlabel("N, Euler steps in the network's ODE blocks")
        for ax in (mem_ax, time_ax):
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
        mem_ax.legend(fontsize=7)
        time_ax.legend(fontsize=7)
    meta = ok[0] if ok else (records[0] if records else {})
    machine = meta.get("device_name", "?") if cuda else meta.get("machine", "?")
    fig.suptitle(
        "Memory and time of one training step (forward, cross-entropy, backward, SGD) vs depth, per memory mode\n"
        f"{machine}, torch {meta.get('torch', '?')}, odenet {meta.get('odenet', '?')} ({meta.get('git_commit', '?')}), "
        "1 thread; python benchmarks/bench_memory.py" + (" --device cuda" if cuda else ""),
        fontsize=10,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny grid for smoke tests (MLPs at N = 10, 100; ResNet-20)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--extended", action="store_true", help="add ResNet-1202 and the slow per-step MLP modes at N = 10,000"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "memory.json")
    parser.add_argument("--figure", type=Path, default=HERE / "figures" / "memory.png")
    parser.add_argument(
        "--timeout",
        type=float,
        help=f"seconds per child process ({DEFAULT_TIMEOUT:g}, {EXTENDED_TIMEOUT:g} with --extended)",
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda needs a CUDA device; none is visible")
    meta = metadata(args.device)  # before: the code measured is the code at the start
    started = time.perf_counter()
    records = measure(args.quick, args.device, extended=args.extended, timeout=args.timeout, verbose=True)
    elapsed = time.perf_counter() - started
    print()
    print(table(records))
    print()
    print(slope_table(records))
    command = "python benchmarks/bench_memory.py" + (" " + " ".join(sys.argv[1:]) if argv is None else "")
    result = {
        "benchmark": "memory",
        "command": command.strip(),
        "units": UNITS,
        "elapsed_s": elapsed,
        "metadata": meta,
        "slopes": [f for key in ("memory_bytes", "saved_bytes", "step_time_s") for f in slopes(records, key)],
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(table(records) + "\n\n" + slope_table(records) + "\n")
    plot(records, args.figure)
    print(
        f"\n{len(records)} configurations in {elapsed:.0f} s; wrote {args.out}, {args.out.with_suffix('.md')}, "
        f"{args.figure}"
    )
    failures = [r for r in records if r["status"] in ("error", "timeout")]
    for r in failures:
        print(f"\n{r['model']} depth {r['depth']} {r['mode']}: {r['status']}\n{r.get('traceback', r.get('error'))}")
    return records


if __name__ == "__main__":
    main()
elif __name__ == CHILD:
    _child(*globals()["_BENCH_CHILD"])
