"""Models: exact published parameter counts, contracts over every model × solver, errors."""

from __future__ import annotations

import pytest
import torch

import odenet
from odenet.models import chen_odenet, chen_resnet, cifar_resnet, mlp_resnet, valid_depths
from odenet.solvers import method_names


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("depth", "expected"),
    # He et al. (2015), Table 6 (option A shortcuts); the exact counts of the reference
    # implementations of those networks.
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962), (1202, 19_421_274)],
)
def test_cifar_resnet_parameter_counts_match_he_et_al(depth, expected):
    with torch.device("meta"):  # counts only: no memory for ResNet-1202's weights
        model = cifar_resnet(depth, block="basic", shortcut="A")
    assert n_params(model) == expected


def test_chen_odenet_and_twin_parameter_counts():
    # torchdiffeq examples/odenet_mnist.py: ODE-Net 208,266; 6-block ResNet 576,778.
    assert n_params(chen_odenet()) == 208_266
    assert n_params(chen_resnet()) == 576_778


def test_shortcut_b_adds_exactly_the_projections():
    # Option B: a bias-free 1×1 conv (+ BN for the basic block) at the two transitions.
    a = n_params(cifar_resnet(20, block="basic", shortcut="A"))
    b = n_params(cifar_resnet(20, block="basic", shortcut="B"))
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_weight_sharing_changes_only_the_ode_blocks():
    per_step = cifar_resnet(20, weights="per_step")
    shared = cifar_resnet(20, weights="shared")
    field = 2 * 9 * 16 * 16 + 4 * 16  # one preact field at width 16
    # Stage 1 has 3 steps → 1 shared field; stages 2, 3 have 2 steps each → 1 field.
    assert n_params(per_step) - n_params(shared) == 2 * field + (2 * 9 * 32 * 32 + 4 * 32) + (2 * 9 * 64 * 64 + 4 * 64)


def test_depth_is_number_of_weighted_layers():
    # 6n+2: stem conv + 2 convs per block × 3n + classifier.
    model = cifar_resnet(32, block="basic")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == 32


# Small widths and images keep every model × solver pair cheap; adaptive solvers get a
# loose tolerance (the contract is about shapes, finiteness and gradients, not accuracy).
TOL = dict(rtol=1e-2, atol=1e-2)
MODEL_CASES = {
    "cifar_preact": (lambda s: cifar_resnet(8, solver=s, width=4, **TOL), (2, 3, 8, 8)),
    "cifar_bottleneck": (lambda s: cifar_resnet(20, solver=s, block="bottleneck", width=4, **TOL), (2, 3, 8, 8)),
    "cifar_plain": (lambda s: cifar_resnet(14, solver=s, residual=False, width=4, **TOL), (2, 3, 8, 8)),
    "cifar_shortcut_b": (lambda s: cifar_resnet(8, solver=s, shortcut="B", width=4, **TOL), (2, 3, 8, 8)),
    "cifar_interpolated": (
        lambda s: cifar_resnet(14, solver=s, weights="interpolated", width=4, **TOL),
        (2, 3, 8, 8),
    ),
    "chen_odenet": (lambda s: chen_odenet(solver=s, width=8, **TOL), (2, 1, 12, 12)),
    "mlp_resnet": (lambda s: mlp_resnet(10, 3, depth=3, width=8, solver=s, step_size=0.5, **TOL), (4, 10)),
}


@pytest.mark.parametrize("solver", method_names())
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_contract(case, solver):
    build, shape = MODEL_CASES[case]
    if case == "cifar_plain" and solver in method_names(adaptive=True):
        with pytest.raises(ValueError, match="fixed-step solvers only"):
            build(solver)
        return
    model = build(solver)
    x = torch.randn(*shape)
    out = model(x)
    assert out.shape == (shape[0], 3 if case == "mlp_resnet" else 10)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    nfe_fwd, nfe_bwd = odenet.total_nfe(model)
    assert nfe_fwd > 0 and nfe_bwd > 0


def test_basic_block_and_chen_twin_contract():
    for model, shape in (
        (cifar_resnet(8, block="basic", width=4), (2, 3, 8, 8)),
        (chen_resnet(width=8), (2, 1, 12, 12)),
    ):
        out = model(torch.randn(*shape))
        assert torch.isfinite(out).all()
        out.sum().backward()


def test_a_model_can_be_evaluated_in_float64():
    model = cifar_resnet(8, solver="rk4", width=4).double().eval()
    out = model(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(depth=21), "not 6n\\+2.*nearest valid depths are 20 and 26"),
        (dict(depth=3), "not 6n\\+2"),
        (dict(depth=21, block="bottleneck"), "not 9n\\+2.*20 and 29"),
        (dict(depth=20, step_size=0.0), "step_size=0.0 is not a step size: give a positive finite number"),
        (dict(depth=20, step_size=-0.1), "step_size=-0.1 is not a step size"),
        (dict(depth=20, solver="rk5"), "solver='rk5' is not a known solver; choose one of: euler"),
        (
            dict(depth=20, block="basic", solver="rk4"),
            "valid with the euler solver only, not solver='rk4'; the pre-activation block \\(preact\\)",
        ),
        (dict(depth=20, block="wide"), "block='wide' is not a residual block; choose one of: basic"),
        (dict(depth=20, shortcut="C"), "shortcut='C' is not a shortcut: choose 'A'"),
        (dict(depth=20, width=0), "width=0 is not a positive integer"),
    ],
)
def test_bad_model_arguments_name_the_fix(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        cifar_resnet(**kwargs)


def test_valid_depths():
    assert valid_depths("preact", 60) == [8, 14, 20, 26, 32, 38, 44, 50, 56]
    assert valid_depths("bottleneck", 50) == [11, 20, 29, 38, 47]


def test_the_one_traversal_of_units_is_the_forward_pass():
    from odenet.models.common import units, walk

    model = cifar_resnet(14, solver="rk4", width=4).eval()
    x = torch.randn(2, 3, 8, 8)
    kinds = [u.kind for u in units(model)]
    assert kinds == ["step"] * 2 + ["transition", "step"] + ["transition", "step"]
    assert torch.allclose(walk(model, x), model(x), atol=1e-6)
    assert [u.kind for u in units(model, steps=False)] == ["block", "transition", "block", "transition", "block"]
    adaptive = cifar_resnet(14, solver="dopri5", width=4).eval()
    assert torch.allclose(walk(adaptive, x), adaptive(x), atol=1e-5)  # adaptive blocks run whole
