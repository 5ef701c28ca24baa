"""The memory benchmark (``benchmarks/bench_memory.py``): its records, and the growth laws behind them.

One quick run (MLPs at N = 10 and 100 steps, ResNet-20; ~25 s) is shared by the tests.
The mode-dependent laws are checked on the deterministic saved-tensor peak
(``odenet.memory.saved_activation_peak``), exactly: backpropagation stores two
(batch, width) tensors per Euler step of the MLP field (the first linear map's input and
the ReLU's output), checkpointing one state per segment, the adjoint of a shared-weight
field nothing per step.
"""

from __future__ import annotations

import math

import pytest

from benchmarks import bench_memory as bench
from odenet.blocks import ode_blocks
from odenet.models import mlp_resnet

FLOAT32 = 4  # bytes


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return bench.measure(quick=True)


def find(records: list[dict], model: str, depth: int, mode: str) -> dict:
    (record,) = [r for r in records if (r["model"], r["depth"], r["mode"]) == (model, depth, mode)]
    assert record["status"] == "ok", record.get("traceback", record.get("error"))
    return record


def test_every_configuration_is_measured_with_units_and_provenance(records):
    configs = bench.grid(quick=True)
    assert [(r["model"], r["depth"], r["mode"]) for r in records] == [(c.model, c.depth, c.mode) for c in configs]
    measured = [r for r in records if r["status"] == "ok"]
    assert {r["mode"] for r in measured} == {"backprop", "checkpoint", "adjoint"}
    assert len(measured) == len(records), [(r["model"], r["depth"], r["mode"], r["error"]) for r in records]
    for r in measured:
        for key in ("rss_step_bytes", "rss_first_step_bytes", "saved_bytes", "memory_bytes", "step_time_s"):
            assert r[key] > 0, (key, r)
            assert key in bench.UNITS
        assert len(r["step_times_s"]) == r["timed_steps"]
        assert r["torch"] and r["machine"] and r["device"] == "cpu"
        # N: the MLP is one block of N steps; ResNet-20 is three stages of n = 3 blocks,
        # two of them opening with a transition, so 3n − 2 = 7 Euler steps.
        assert r["steps"] == (r["depth"] if r["model"] != "resnet" else 7)


def test_parameter_counts_are_the_models(records):
    for r in (r for r in records if r["status"] == "ok"):
        width, per_step = bench.MLP_WIDTH, 2 * (bench.MLP_WIDTH**2 + bench.MLP_WIDTH)
        lift_and_head = (bench.MLP_FEATURES + 1) * width + (width + 1) * bench.MLP_CLASSES
        expected = {
            "resnet": 269_722,  # He et al. (2015), Table 6, ResNet-20 (option A)
            "mlp": lift_and_head + r["depth"] * per_step,
            "mlp_shared": lift_and_head + per_step,
        }[r["model"]]
        assert r["parameters"] == expected


@pytest.mark.parametrize("model", ["mlp", "mlp_shared"])
def test_backprop_stores_two_states_per_step(records, model):
    small, large = find(records, model, 10, "backprop"), find(records, model, 100, "backprop")
    state = small["batch"] * bench.MLP_WIDTH * FLOAT32
    assert large["saved_bytes"] - small["saved_bytes"] == 90 * 2 * state


@pytest.mark.parametrize("model", ["mlp", "mlp_shared"])
def test_checkpoint_stores_one_state_per_segment_of_about_sqrt_n_steps(records, model):
    small, large = find(records, model, 10, "checkpoint"), find(records, model, 100, "checkpoint")
    segments = {}
    for n in (10, 100):
        (block,) = ode_blocks(mlp_resnet(64, 10, depth=n, memory="checkpoint"))
        segments[n] = len(block.segments())
        assert sum(len(s) for s in block.segments()) == n
        assert segments[n] == round(math.sqrt(n))
    assert (small["segments"], large["segments"]) == (segments[10], segments[100])
    state = small["batch"] * bench.MLP_WIDTH * FLOAT32
    assert large["saved_bytes"] - small["saved_bytes"] == (segments[100] - segments[10]) * state
    assert large["saved_bytes"] < find(records, model, 100, "backprop")["saved_bytes"] / 10
    # Resident memory, which also holds the one segment being recomputed: still far below.
    assert large["rss_step_bytes"] < find(records, model, 100, "backprop")["rss_step_bytes"] / 2


def test_the_adjoint_of_a_shared_weight_field_stores_nothing_per_step(records):
    small, large = find(records, "mlp_shared", 10, "adjoint"), find(records, "mlp_shared", 100, "adjoint")
    assert large["saved_bytes"] == small["saved_bytes"]
    assert large["rss_step_bytes"] < find(records, "mlp_shared", 100, "backprop")["rss_step_bytes"] / 2


def test_resnet_checkpoint_saves_less_than_backprop(records):
    assert (
        find(records, "resnet", 20, "checkpoint")["saved_bytes"]
        < find(records, "resnet", 20, "backprop")["saved_bytes"]
    )


def test_slopes_table_and_figure(records, tmp_path):
    fits = {(f["model"], f["mode"]): f["slope_all"] for f in bench.slopes(records, "saved_bytes")}
    # a + b·N with a fixed cost a > 0 (lift, head, the loss): a slope just below 1.
    assert 0.9 < fits["mlp", "backprop"] < 1.0
    assert fits["mlp", "checkpoint"] < 0.5
    assert fits["mlp_shared", "adjoint"] == pytest.approx(0.0, abs=1e-12)
    text = bench.table(records)
    assert text.count("\n") == len(records) + 1 and "saved MiB" in text
    path = tmp_path / "memory.png"
    bench.plot(records, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
