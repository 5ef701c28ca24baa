"""Normalisation as a controlled variable: the default rule, frozen statistics, recalibration
after re-solving, and the saved-activation memory of one training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from odenet.experiment import ModelConfig
from odenet.memory import saved_activation_peak
from odenet.models import cifar_resnet, mlp_resnet
from odenet.models.chen import chen_odenet
from odenet.norms import FrozenBatchNorm, calibrate_batchnorm, resolve_norm


def _kinds(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules()} & {"BatchNorm2d", "BatchNorm1d", "GroupNorm", "FrozenBatchNorm"}


@pytest.mark.parametrize(
    ("solver", "weights", "expected"),
    [
        ("euler", "per_step", {"BatchNorm2d"}),  # a discrete ResNet keeps batch norm
        ("rk4", "per_step", {"BatchNorm2d"}),
        ("dopri5", "per_step", {"GroupNorm"}),  # adaptive: statistics would come from every solver call
        ("euler", "shared", {"GroupNorm"}),  # autonomous: one set of statistics for every time
    ],
)
def test_auto_never_puts_batch_norm_inside_adaptive_or_shared_fields(solver, weights, expected):
    model = cifar_resnet(14, solver=solver, weights=weights, in_channels=1)
    assert _kinds(model) == expected


def test_batch_norm_in_an_adaptive_field_is_allowed_when_asked_for():
    assert _kinds(cifar_resnet(14, solver="dopri5", in_channels=1, norm="batch")) == {"BatchNorm2d"}
    assert ModelConfig(depth=14, solver="dopri5", norm="batch").norm == "batch"


def test_resolve_norm_is_the_one_rule():
    assert resolve_norm("auto", adaptive=False, autonomous=False) == "batch"
    assert resolve_norm("auto", adaptive=True, autonomous=False) == "group"
    assert resolve_norm("auto", adaptive=False, autonomous=True) == "group"
    assert resolve_norm("auto", adaptive=True, autonomous=True, default="none") == "none"  # MLPs: no norm
    assert resolve_norm("frozen_batch", adaptive=True, autonomous=True) == "frozen_batch"
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        resolve_norm("layer", adaptive=False, autonomous=False)


def test_frozen_batch_norm_fields_outside_keep_ordinary_batch_norm():
    model = cifar_resnet(14, in_channels=1, norm="frozen_batch")
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm)]
    ordinary = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    assert frozen and ordinary  # fields frozen; stem, transitions and head ordinary
    for block in model.ode_blocks():
        assert all(type(m) is not nn.BatchNorm2d for m in block.modules())


def test_a_frozen_field_is_one_function_of_the_state_in_training_mode():
    """With frozen statistics a sample's output does not depend on the rest of its batch,
    in train mode too: the field is a fixed right-hand side (an ODE), unlike batch norm."""
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    frozen = cifar_resnet(8, in_channels=1, norm="frozen_batch").train()
    calibrate_batchnorm(frozen, x)
    field = frozen.ode_blocks()[0].field
    z = torch.randn(8, 16, 8, 8)
    t = torch.zeros(())
    together = field.at(0.5)(t, z) if hasattr(field, "at") else field(t, z)
    alone = field.at(0.5)(t, z[:2]) if hasattr(field, "at") else field(t, z[:2])
    torch.testing.assert_close(together[:2], alone, rtol=1e-6, atol=1e-6)

    batch = cifar_resnet(8, in_channels=1, norm="batch").train()
    field = batch.ode_blocks()[0].field
    f = field.at(0.5) if hasattr(field, "at") else field
    assert not torch.allclose(f(t, z)[:2], f(t, z[:2]), atol=1e-4)


def test_calibration_gives_exact_averages_and_can_leave_ordinary_norms_alone():
    torch.manual_seed(0)
    model = cifar_resnet(8, in_channels=1, norm="frozen_batch")
    x = torch.randn(64, 1, 8, 8) * 3 + 1
    ordinary = next(m for m in model.modules() if type(m) is nn.BatchNorm2d)
    before = ordinary.running_mean.clone()
    calibrate_batchnorm(model, x, batch_size=16, only=FrozenBatchNorm)
    torch.testing.assert_close(ordinary.running_mean, before)  # untouched
    frozen = next(m for m in model.modules() if isinstance(m, FrozenBatchNorm))
    assert not torch.allclose(frozen.running_mean, torch.zeros_like(frozen.running_mean))
    assert not frozen.calibrating and model.training  # restored

    # The statistics are the cumulative average over the calibration batches: one pass
    # over x in batches of 16 equals the average of the four batches' means.
    seen: list[torch.Tensor] = []
    hook = frozen.register_forward_pre_hook(lambda m, a: seen.append(a[0].mean(dim=(0, 2, 3))))
    calibrate_batchnorm(model, x, batch_size=16, only=FrozenBatchNorm)
    hook.remove()
    torch.testing.assert_close(frozen.running_mean, torch.stack(seen).mean(0), rtol=1e-5, atol=1e-6)


def test_training_calibrates_frozen_statistics_before_every_epoch():
    from odenet.data import load_dataset
    from odenet.train import TrainConfig, train

    data = load_dataset("digits", seed=0)
    model = cifar_resnet(8, in_channels=1, width=4, norm="frozen_batch")
    frozen = next(m for m in model.modules() if isinstance(m, FrozenBatchNorm))
    history = train(model, data, TrainConfig(epochs=1, batch_size=256, threads=1), progress=False)
    assert not history.diverged
    assert int(frozen.num_batches_tracked) > 0  # calibrated, not left at 0/1
    # Training steps do not move frozen statistics: after one more calibration-free
    # forward pass in train mode they are unchanged.
    mean = frozen.running_mean.clone()
    model.train()(data.x_train[:32])
    torch.testing.assert_close(frozen.running_mean, mean)


def test_with_solver_recalibrates_a_copy_and_leaves_the_trained_network_alone():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 8, 8)
    model = cifar_resnet(14, in_channels=1)
    calibrate_batchnorm(model, x)
    model.eval()
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    shared = model.with_solver("rk4", 4)
    assert shared.ode_blocks()[0].steps == 4 * model.ode_blocks()[0].steps
    assert shared.stem is model.stem  # no copy without recalibration
    fresh = model.with_solver("rk4", 4, recalibrate=x)
    assert fresh.stem is not model.stem and not fresh.training
    after = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for a, b in zip(stats, after, strict=True):
        torch.testing.assert_close(a, b)  # the trained network's statistics are untouched
    # Re-solving changes the trajectory, so the recalibrated statistics differ from the old.
    moved = [m.running_mean for m in fresh.modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(not torch.allclose(a, b) for a, b in zip(stats, moved, strict=True))
    # Recalibrating under the *same* solver reproduces the statistics exactly.
    same = model.with_solver(None, 1, recalibrate=x)
    for a, b in zip(stats, [m.running_mean for m in same.modules() if isinstance(m, nn.BatchNorm2d)], strict=True):
        torch.testing.assert_close(a, b)


def test_mlp_norm_option():
    assert _kinds(mlp_resnet(4, 2, depth=3, width=8)) == set()
    assert _kinds(mlp_resnet(4, 2, depth=3, width=8, norm="group")) == {"GroupNorm"}
    assert _kinds(mlp_resnet(4, 2, depth=3, width=8, norm="frozen_batch")) == {"FrozenBatchNorm"}


def test_saved_activation_memory_grows_with_depth_and_not_under_the_adjoint():
    """Chen et al.'s memory column, measured: a ResNet's saved activations grow linearly
    with depth; backpropagation through dopri5 stores more the more steps it takes; the
    adjoint method stores nothing inside the solve, whatever the tolerance."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    small = torch.randn(16, 1, 8, 8)
    peaks = [saved_activation_peak(cifar_resnet(d, in_channels=1), small, y) for d in (14, 26, 38)]
    assert peaks[0] < peaks[1] < peaks[2]
    assert peaks[2] - peaks[1] == pytest.approx(peaks[1] - peaks[0], rel=1e-9)  # linear in depth
    backprop = [saved_activation_peak(chen_odenet(rtol=tol, atol=tol, width=16), x, y) for tol in (1e-2, 1e-5)]
    adjoint = [
        saved_activation_peak(chen_odenet(rtol=tol, atol=tol, width=16, adjoint=True), x, y) for tol in (1e-2, 1e-5)
    ]
    assert backprop[1] > 1.2 * backprop[0]
    assert adjoint[0] == adjoint[1] < backprop[0]


def test_the_memory_probe_does_not_change_gradients_or_the_model():
    torch.manual_seed(0)
    model = cifar_resnet(8, in_channels=1, width=4)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert saved_activation_peak(model, x, y) > 0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert all(p.grad is None for p in model.parameters())
    F.cross_entropy(model(x), y).backward()  # still trains normally afterwards
    assert np.isfinite(sum(float(p.grad.norm()) for p in model.parameters()))
