"""Lesions (Veit, Wilber & Belongie 2016): what deleting a unit computes, and the lesion study kind.

Deleting a step of a residual block is the network with that step left out, computed
here by hand for Euler and RK4; a plain layer is skipped; a residual transition becomes
its shortcut and is reported apart from the steps; the random-deletion curve starts at
the intact network and averages exactly over every set where there are few; the
path-length split of the gradient is checked against the sum over all 2^m paths of a
linear network and sums to the gradient of a nonlinear one. A small trained residual
network loses less from a deleted middle block than its plain twin (Veit et al. Fig. 3).
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn

from odenet.blocks import ODEBlock
from odenet.data import load_dataset
from odenet.depth import depth_field
from odenet.errors import ConfigError
from odenet.experiment import ModelConfig
from odenet.lesions import (
    _path_terms,
    lesion_accuracy,
    lesioned,
    path_gradients,
    random_lesions,
    shortcut_only,
    single_lesions,
)
from odenet.models import ResidualNetwork, Transition, cifar_resnet, mlp_resnet
from odenet.models.common import units
from odenet.plots import plot_study
from odenet.studies import KINDS, run_study
from odenet.train import TrainConfig, evaluate, torch_threads, train


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as every study cell runs: on a busy machine tiny ops are faster so."""
    with torch_threads(1):
        yield


def _mlp(depth: int = 4, solver: str = "euler", residual: bool = True, h: float = 0.5) -> ResidualNetwork:
    torch.manual_seed(1)
    return mlp_resnet(3, 4, depth=depth, width=6, solver=solver, step_size=h, residual=residual).double().eval()


def _conv(depth: int = 14, residual: bool = True, block: str = "preact") -> ResidualNetwork:
    torch.manual_seed(2)
    net = cifar_resnet(depth, in_channels=1, num_classes=5, width=4, residual=residual, block=block).double()
    with torch.no_grad():  # non-trivial running statistics, so eval mode is not the identity norm
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _by_hand(net: ResidualNetwork, x: Tensor, step: object) -> Tensor:
    """stem → step(n, x) for every n of the one ODE block → head."""
    block: ODEBlock = net.body[0]  # type: ignore[assignment]
    x = net.stem(x)
    for n in range(block.steps):
        x = step(n, block.field.fields[n], block.step_size, x)  # type: ignore[operator, index]
    return net.head(x)


def _data(n: int = 7, features: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, features, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("solver", ["euler", "rk4"])
@pytest.mark.parametrize("residual", [True, False])
def test_deleting_nothing_is_the_network_and_the_model_is_left_as_it_was(solver, residual):
    net = _mlp(solver=solver, residual=residual)
    x, _ = _data()
    with torch.no_grad():
        assert torch.equal(lesioned(net, x), net(x))
    conv = _conv(residual=residual)
    images, labels = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        assert torch.equal(lesioned(conv, images), conv(images))
    # In train mode too: every measurement runs in eval mode on the model (or a copy), then
    # restores the mode; nothing else moves, batch-norm running statistics included.
    before = copy.deepcopy(conv.state_dict())
    conv.train()
    assert lesion_accuracy(conv, images, labels) == evaluate(conv, images, labels)[1]
    single_lesions(conv, images, labels)
    random_lesions(conv, images, labels, max_deleted=2, subsets=2)
    path_gradients(conv, images, labels)
    assert conv.training
    for name, value in conv.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_deleting_an_euler_step_of_a_residual_mlp_leaves_that_step_out():
    net = _mlp(depth=4, h=0.5)
    x, _ = _data()

    def step(n: int, f: nn.Module, h: float, z: Tensor) -> Tensor:
        return z if n == 2 else z + h * f(n * h, z)  # step 2 deleted: x ↦ x

    with torch.no_grad():
        torch.testing.assert_close(lesioned(net, x, {2}), _by_hand(net, x, step), rtol=1e-14, atol=1e-14)
        assert not torch.allclose(lesioned(net, x, {2}), net(x))


def test_deleting_an_rk4_step_skips_the_whole_step_with_its_four_stages():
    net = _mlp(depth=3, solver="rk4", h=0.4)
    x, _ = _data()

    def step(n: int, f: nn.Module, h: float, z: Tensor) -> Tensor:
        if n == 0:
            return z
        t = n * h
        k1 = f(t, z)
        k2 = f(t + h / 2, z + h / 2 * k1)
        k3 = f(t + h / 2, z + h / 2 * k2)
        k4 = f(t + h, z + h * k3)
        return z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    with torch.no_grad():
        torch.testing.assert_close(lesioned(net, x, {0}), _by_hand(net, x, step), rtol=1e-13, atol=1e-13)


def test_deleting_a_layer_of_a_plain_net_skips_it():
    net = _mlp(depth=4, residual=False)
    x, _ = _data()

    def step(n: int, f: nn.Module, h: float, z: Tensor) -> Tensor:
        return z if n in (1, 3) else f(n * h, z)  # plain Euler: x_{n+1} = F_n(x_n)

    with torch.no_grad():
        torch.testing.assert_close(lesioned(net, x, {1, 3}), _by_hand(net, x, step), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("block", ["preact", "basic"])
def test_a_residual_transition_becomes_its_shortcut_and_is_reported_apart(block):
    net = _conv(depth=14, block=block)  # n = 2: step, step | transition, step | transition, step
    kinds = [u.kind for u in units(net)]
    assert kinds == ["step", "step", "transition", "step", "transition", "step"]
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    transition: Transition = net.body[1]  # type: ignore[assignment]
    assert isinstance(transition, Transition)
    with torch.no_grad():
        z = net.body[0](net.stem(x))
        if block == "preact":  # option A on the shared activation ReLU(BN(x)): subsample, zero channels
            a = F.relu(transition.field.norm1(z))  # type: ignore[operator, union-attr]
            shortcut = F.pad(a[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        else:  # option A on x itself, then the ReLU after the sum
            shortcut = F.relu(F.pad(z[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2)))
        torch.testing.assert_close(shortcut_only(transition, z), shortcut, rtol=0, atol=0)
        expected = net.head(net.body[4](net.body[3](net.body[2](shortcut))))
        torch.testing.assert_close(lesioned(net, x, {2}), expected, rtol=1e-14, atol=1e-14)

    single = single_lesions(net, x, y)
    assert single.is_transition.values.tolist() == [0, 0, 1, 0, 1, 0]
    assert single.is_transition.dtype == np.int64
    steps, transitions = single.lesion_accuracy.values, single.transition_lesion_accuracy.values
    assert np.isfinite(steps).tolist() == [True, True, False, True, False, True]
    assert np.isfinite(transitions).tolist() == [False, False, True, False, True, False]
    assert transitions[2] == lesion_accuracy(net, x, y, {2})
    assert steps[3] == lesion_accuracy(net, x, y, {3})

    plain = _conv(depth=14, residual=False, block=block)
    plain_single = single_lesions(plain, x, y)
    assert np.isnan(plain_single.transition_lesion_accuracy.values).all()
    assert np.isfinite(plain_single.lesion_accuracy.values).sum() == 4
    with pytest.raises(ConfigError, match="has no shortcut to fall back on"):
        lesion_accuracy(plain, x, y, {4})
    with pytest.raises(ConfigError, match="names unit 6, but the network has 6 units"):
        lesion_accuracy(net, x, y, {6})


def test_the_k_curve_starts_at_the_intact_network_and_never_draws_a_transition():
    net = _conv(depth=14)  # 4 steps (0, 1, 3, 5), 2 transitions
    x = torch.randn(40, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)  # the intact network is right on every input
    y[:10] = (y[:10] + 1) % 5  # … but these ten
    curve = random_lesions(net, x, y, max_deleted=6, subsets=5, seed=0)
    mean, std, count = (curve[v].values for v in curve.data_vars)
    assert mean[0] == lesion_accuracy(net, x, y) == 0.75 and count[0] == 1 and np.isnan(std[0])
    # k = 1: 4 sets ≤ 5, so all of them (the transitions are not among them): the exact mean.
    single = single_lesions(net, x, y).lesion_accuracy.values
    assert count[1] == 4 and mean[1] == pytest.approx(np.nanmean(single), abs=1e-15)
    assert std[1] == pytest.approx(np.nanstd(single, ddof=1), abs=1e-15)
    assert count.tolist() == [1, 4, 5, 4, 1, 0, 0]  # C(4, k) capped at 5, none beyond the 4 steps
    assert mean[4] == lesion_accuracy(net, x, y, {0, 1, 3, 5}) and np.isnan(mean[5:]).all()
    again = random_lesions(net, x, y, max_deleted=6, subsets=5, seed=0)
    xr.testing.assert_identical(curve, again)  # the sets come from the seed
    with pytest.raises(ConfigError, match="subsets=0 is not a number of random sets"):
        random_lesions(net, x, y, max_deleted=2, subsets=0)


class _Linear(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(n, n, dtype=torch.float64) / n**0.5)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return x @ self.a.T


def test_the_path_split_of_the_gradient_is_the_sum_over_paths_of_each_length():
    torch.manual_seed(4)
    m, n, h = 4, 3, 0.7
    block = ODEBlock(depth_field(lambda: _Linear(n), m, m * h, "per_step"), steps=m, step_size=h)
    net = ResidualNetwork(nn.Identity(), nn.Sequential(block), nn.Linear(n, 2).double()).eval()
    x, y = torch.randn(5, n, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    states = x.clone().requires_grad_(True)
    out = states
    for k in range(m):
        out = out + h * block.field.fields[k](0.0, out)  # type: ignore[index, operator]
    (top,) = torch.autograd.grad(F.cross_entropy(net.head(out), y), out)
    # ∂L/∂x = top · ∏ (I + h·A_k): a path picks h·A_k or I at every step; sum those with k branches.
    a = [h * block.field.fields[k].a.detach() for k in range(m)]  # type: ignore[index, union-attr]
    expected = [torch.zeros_like(x) for _ in range(m + 1)]
    for path in itertools.product([False, True], repeat=m):
        g = top
        for k in reversed(range(m)):
            g = g @ a[k] if path[k] else g
        expected[sum(path)] += g
    terms = _path_terms(net, x, y)
    for got, want in zip(terms, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    norms = path_gradients(net, x, y).path_gradient_norm.values
    np.testing.assert_allclose(norms, [float(g.norm()) for g in expected], rtol=1e-12)


@pytest.mark.parametrize("block", ["preact", "basic"])
def test_the_path_terms_of_a_conv_resnet_sum_to_its_gradient(block):
    net = _conv(depth=14, block=block)
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    terms = _path_terms(net, x, y)
    assert len(terms) == len(units(net)) + 1
    stem = net.stem(x).detach().requires_grad_(True)
    (whole,) = torch.autograd.grad(F.cross_entropy(net.head(net.body(stem)), y), stem)
    torch.testing.assert_close(sum(terms), whole, rtol=1e-10, atol=1e-14)
    # No split for a plain net or a higher-order step: NaN, not a wrong number.
    assert np.isnan(path_gradients(_conv(residual=False), x, y).path_gradient_norm.values).all()
    assert np.isnan(path_gradients(_mlp(solver="midpoint"), *_data()).path_gradient_norm.values).all()


def test_a_trained_residual_net_loses_less_than_its_plain_twin_from_one_middle_block():
    """Veit et al. (2016), Fig. 3: one deleted block costs a residual net little, a plain one almost everything."""
    data = load_dataset("digits", seed=0)
    drops = {}
    for residual in (True, False):
        torch.manual_seed(0)
        net = cifar_resnet(14, in_channels=1, num_classes=10, width=8, residual=residual)
        train(net, data, TrainConfig(epochs=2, batch_size=64, threads=1, seed=0), progress=False)
        intact = lesion_accuracy(net, data.x_test, data.y_test)
        assert intact > 0.8  # both trained (0.95 and 0.91 here)
        drops[residual] = intact - lesion_accuracy(net, data.x_test, data.y_test, {3})  # the step in stage 2
    assert drops[True] < 0.25 and drops[False] > 0.5 and drops[True] < drops[False] / 3


def test_a_tiny_lesion_study_runs_end_to_end_and_plots(tmp_path):
    study = KINDS["lesion"](
        dataset="spirals", model=ModelConfig(depth=2, width=8), train=TrainConfig(epochs=1, batch_size=256),
        solvers=("euler", "midpoint"), depths=(2, 3), seeds=(0,), max_deleted=4, subsets=2, grad_samples=16,
    )  # fmt: skip
    ds = run_study(study, tmp_path / "lesion.nc", progress=False).dataset
    assert ds is not None and int(ds.done.sum()) == 8 and ds.attrs["study"] == "lesion"
    assert ds.lesion_accuracy.dims == ("solver", "depth", "arch", "seed", "block")
    assert ds.random_lesion_accuracy.dims == ("solver", "depth", "arch", "seed", "deleted")
    assert ds.path_gradient_norm.dims == ("solver", "depth", "arch", "seed", "path_length")
    assert ds.sizes["block"] == 3 and ds.sizes["deleted"] == 5 and ds.sizes["path_length"] == 4
    assert ds.deleted.attrs["long_name"] == "number k of ODE steps deleted at random"
    assert ds.lesion_accuracy.attrs == {"long_name": "test accuracy with this ODE step deleted (x -> x)", "units": "1"}
    # The intact accuracy is training's own last test accuracy, and the k-curve's start.
    xr.testing.assert_equal(ds.intact_accuracy, ds.final_test_accuracy.rename("intact_accuracy"))
    np.testing.assert_array_equal(ds.random_lesion_accuracy.sel(deleted=0).values, ds.intact_accuracy.values)
    # The depth-2 MLP fills two blocks: the third is padding (NaN, and -1 for the flag).
    shallow = ds.sel(depth=2)
    assert np.isnan(shallow.lesion_accuracy.sel(block=2)).all() and (shallow.is_transition.sel(block=2) == -1).all()
    assert (ds.sel(depth=3).is_transition == 0).all()  # an MLP has no transitions
    assert (shallow.random_lesion_subsets.values[..., :3] == [1, 2, 1]).all()
    assert (shallow.random_lesion_subsets.values[..., 3:] == 0).all()
    # The path split exists for Euler residual cells only.
    paths = ds.path_gradient_norm.sel(path_length=[0, 1, 2])
    assert np.isfinite(paths.sel(solver="euler", arch="residual")).all()
    assert np.isnan(ds.path_gradient_norm.sel(solver="midpoint")).all()
    assert np.isnan(ds.path_gradient_norm.sel(arch="plain")).all()
    assert np.isnan(ds.path_gradient_norm.sel(solver="euler", arch="residual", depth=2, path_length=3)).all()

    written = plot_study(ds, tmp_path / "figures", dpi=30)
    assert {p.stem for p in written} == {"lesion-single", "lesion-random", "lesion-paths"}
    assert all(p.stat().st_size > 0 for p in written)


def test_adaptive_solvers_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="solvers: dopri5 is adaptive: its solve has no steps to delete"):
        KINDS["lesion"](solvers=("euler", "dopri5"))
    with pytest.raises(ConfigError, match="solvers: 'rk5' is not a known solver"):
        KINDS["lesion"](solvers=("rk5",))
    odenet = mlp_resnet(3, 4, depth=2, solver="dopri5")
    with pytest.raises(ConfigError, match="solver='dopri5' is adaptive: its solve has no steps to delete"):
        lesion_accuracy(odenet, *_data(features=3))
