"""Training: determinism, divergence as a result, checkpoints, schedules."""

from __future__ import annotations

import pytest
import torch

from odenet.data import load_dataset, spirals
from odenet.models import cifar_resnet, mlp_resnet
from odenet.train import TrainConfig, evaluate, load_checkpoint, save_checkpoint, train


def small_mlp(seed: int = 0, solver: str = "euler"):
    torch.manual_seed(seed)
    return mlp_resnet(2, 2, depth=3, width=16, solver=solver, step_size=0.5)


def test_same_seed_gives_the_same_history_on_cpu():
    data = spirals(n=400)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=3, device="cpu")
    a = train(small_mlp(), data, cfg, progress=False)
    b = train(small_mlp(), data, cfg, progress=False)
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "grad_norm", "lr"):
        assert getattr(a, key) == getattr(b, key), key


def test_training_learns_the_digits():
    data = load_dataset("digits")
    model = cifar_resnet(8, in_channels=1, width=8)
    h = train(model, data, TrainConfig(epochs=4, batch_size=64, lr=0.1, device="cpu"), progress=False)
    # A linear classifier reaches ~95% on these digits; a small ResNet after 4 epochs
    # is far above the 10% of chance and its loss falls.
    assert h.test_accuracy[-1] > 0.85
    assert h.train_loss[-1] < h.train_loss[0]
    assert len(h.wall_time) == 4 and all(t2 > t1 for t1, t2 in zip(h.wall_time, h.wall_time[1:], strict=False))
    assert all(g > 0 for g in h.grad_norm)
    # ResNet-8: one Euler step in stage 1; stages 2 and 3 hold only their transitions.
    assert h.nfe_forward == [1.0] * 4 and h.nfe_backward == [1.0] * 4


def test_huge_learning_rate_is_recorded_as_divergence_not_raised():
    data = spirals(n=400)
    cfg = TrainConfig(epochs=5, batch_size=64, lr=1e6, schedule="constant", momentum=0.9, device="cpu")
    h = train(small_mlp(), data, cfg, progress=False)
    assert h.diverged and h.diverged_epoch == 1 and "non-finite" in h.reason
    assert h.epochs == 0


def test_adaptive_solver_failure_is_recorded_as_divergence():
    data = spirals(n=200)
    model = mlp_resnet(2, 2, depth=1, width=8, solver="dopri5", rtol=1e-9, atol=1e-9)
    for block in model.ode_blocks():
        block.max_steps = 2
    h = train(model, data, TrainConfig(epochs=2, batch_size=100, device="cpu"), progress=False)
    assert h.diverged and "solver failed" in h.reason


def test_adaptive_training_records_nfe():
    data = spirals(n=200)
    model = mlp_resnet(2, 2, depth=1, width=8, solver="dopri5")
    h = train(model, data, TrainConfig(epochs=1, batch_size=100, device="cpu"), progress=False)
    assert h.nfe_forward[0] >= 6 and h.nfe_backward[0] > 0


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = small_mlp()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, {"note": "x"}, epoch=3)
    other = small_mlp(seed=1)
    state = load_checkpoint(path, other)
    assert state["epoch"] == 3 and state["config"] == {"note": "x"}
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    # Any object outside torch's weights-only allow-list stands for code a pickle could run.
    torch.save({"model": {}, "payload": TrainConfig()}, path)
    with pytest.raises(Exception, match=r"weights_only|Unsupported global"):
        load_checkpoint(path)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "constant"])
def test_schedules_run_and_record_lr(schedule):
    h = train(small_mlp(), spirals(n=200), TrainConfig(epochs=2, batch_size=50, schedule=schedule, device="cpu"),
              progress=False)  # fmt: skip
    assert len(h.lr) == 2 and all(lr >= 0 for lr in h.lr)


@pytest.mark.parametrize("kwargs", [dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(schedule="warm")])
def test_bad_train_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_evaluate_restores_training_mode():
    model = small_mlp()
    data = spirals(n=100)
    model.train()
    loss, acc = evaluate(model, data.x_test, data.y_test)
    assert model.training and loss > 0 and 0 <= acc <= 1
