"""Lesions: residual units deleted at test time (Veit, Wilber & Belongie 2016).

Veit et al. (2016), "Residual networks behave like ensembles of relatively shallow
networks" (NeurIPS), §4: a trained network is evaluated with one building block deleted
(Fig. 3), then with k random ones deleted (Fig. 4a). A residual network hardly notices
the loss of one block; a plain (VGG-style) network falls to chance. In a residual
block they remove the residual module and keep the skip connection (or the downsampling
projection, where there is one), so that y_i = y_{i-1} + f_i(y_{i-1}) becomes
y_i = y_{i-1} (§4.1); their VGG net has the same number of channels in every layer so
that any layer can be removed, i.e. taken out with its input passed on.

What deleting a unit means here (units in forward order, ``odenet.models.common.units``):

* a step of a residual ``ODEBlock``, x ↦ x + h·Σᵢ bᵢkᵢ with any tableau: x ↦ x. The
  whole step, every stage of it, is skipped; for Euler this is exactly Veit et al.'s
  deletion of the residual branch f = h·F.
* a post-activation ("basic", He et al. 2015) step x ↦ ReLU(x + h·F(x)): x ↦ x as well.
  Its input is the output of a ReLU (the basic stem ends in one, so do every step and
  transition), so x = ReLU(x) and this is also ReLU(x + 0): the same deletion.
* a step of a plain net (no skip: x ↦ Σᵢ bᵢkᵢ, for Euler x ↦ F(x)): x ↦ x, the layer is
  taken out and its input passed on, as Veit et al. do with VGG. The state keeps its
  shape, so the next layer can take it.
* a stage ``Transition`` of a residual net, x ↦ π(S(a) + h·F(a)) (a = BN–ReLU(x) for
  pre-activation fields, the input both branches share; a = x otherwise; S the shortcut,
  option A's zero padding or option B's 1×1 projection; π the basic block's ReLU, or
  nothing): x ↦ π(S(a)), the shortcut alone — Veit et al.'s downsampling projection,
  kept. It changes the shape of the state, so it is reported apart from the
  steps (``transition_lesion_accuracy``) and never drawn into a random set.
* a stage transition of a plain net has no shortcut to fall back on: the next unit needs
  the new shape, so it cannot be deleted (NaN).

Every accuracy is measured in eval mode: batch norm uses the running statistics of the
intact network, as in Veit et al. (nothing is recalibrated after a deletion). Fixed-step
solvers only: an adaptive solve has no steps to delete.

Paths (Veit et al. §5, Fig. 6). Unrolled, a network of m residual units is a sum over
2^m paths, each through the residual branch of some units and the skip of the others.
For Euler steps the backward pass factorises the same way: the Jacobian of unit i is
π'·(S' + R'), skip plus branch, so the loss gradient at the first unit's input is
Σ_k g_k, with g_k the summed gradient of all C(m, k) paths through exactly k branches.
``path_gradients`` computes every g_k exactly, by carrying the gradient backward as a
polynomial in the branch count: g'_k = S'ᵀ·π'ᵀ·g_k + R'ᵀ·π'ᵀ·g_{k-1} per unit, about m²
vector–Jacobian products in all (cheap at the depths studied here). It stores ‖g_k‖.
That is not quite Veit et al.'s Fig. 6(b)–(c), which sample single paths and report the
mean magnitude of one path (b) and that mean times the number of paths (c): ‖g_k‖ is
the magnitude of the paths' sum, so paths that point in different directions partly
cancel in it (‖g_k‖ ≤ the sum of the single paths' magnitudes), and it needs no sampling.
A step of a higher-order tableau nests the field in itself (F(x + h·a·F(x))), so it has
no split into one skip and one branch; plain nets have no skip at all. Both give NaN.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Collection, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn

from odenet.blocks import ODEBlock
from odenet.errors import ConfigError
from odenet.labels import Variable, labelled
from odenet.models.common import ResidualNetwork, Transition, Unit, units, walk

__all__ = [
    "INTACT",
    "PATHS",
    "RANDOM",
    "SINGLE",
    "lesion_accuracy",
    "lesioned",
    "path_gradients",
    "random_lesions",
    "shortcut_only",
    "single_lesions",
]

# What each measurement returns, declared once: the lesion study's schema is these.
INTACT = Variable("intact_accuracy", (), "test accuracy of the intact network (eval mode)", "1")
SINGLE: tuple[Variable, ...] = (
    Variable("lesion_accuracy", ("block",), "test accuracy with this ODE step deleted (x -> x)", "1"),
    Variable(
        "transition_lesion_accuracy",
        ("block",),
        "test accuracy with this stage transition replaced by its shortcut",
        "1",
    ),
    Variable("is_transition", ("block",), "the unit is a stage transition (1) or an ODE step (0)", "1", "int64"),
)
RANDOM: tuple[Variable, ...] = (
    Variable("random_lesion_accuracy", ("deleted",), "test accuracy with k random ODE steps deleted, mean", "1"),
    Variable(
        "random_lesion_accuracy_std",
        ("deleted",),
        "sample standard deviation (ddof=1) of that accuracy over the random sets",
        "1",
    ),
    Variable(
        "random_lesion_subsets",
        ("deleted",),
        "sets of k deleted ODE steps evaluated (every one when there are fewer)",
        "1",
        "int64",
    ),
)
PATHS: tuple[Variable, ...] = (
    Variable(
        "path_gradient_norm",
        ("path_length",),
        "2-norm of the summed loss gradient of the paths through k residual branches",
        "1",
    ),
)

# Inputs per forward pass when a test set is evaluated; every unit's output of a batch is
# kept (for CIFAR ResNet-110 at 256 images about 0.5 GiB).
BATCH_SIZE = 256

Branch = Callable[[Tensor], Tensor]


def _network(model: nn.Module) -> ResidualNetwork:
    if not isinstance(model, ResidualNetwork):
        raise ValueError(f"lesions need an odenet ResidualNetwork (stem, body, head), not {type(model).__name__}")
    for module in model.body:
        if isinstance(module, ODEBlock) and module.method.adaptive:
            raise ConfigError(
                "lesions delete single steps, and {solver} is adaptive: its solve has no steps to delete; "
                "choose a fixed-step solver (euler, midpoint, rk4, …)",
                solver=module.method.name,
            )
    return model


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def shortcut_only(transition: Transition, x: Tensor) -> Tensor:
    """A residual stage transition with its residual branch deleted: x ↦ π(S(a)).

    a = the activated input BN–ReLU(x) that both branches of a pre-activation transition
    share (x itself otherwise), S the shortcut, π the projection (the basic block's ReLU)
    if any. x: (batch, in, H, W) → (batch, out, H/stride, W/stride).
    """
    if transition.shortcut is None:
        raise ConfigError(
            "a stage transition of a plain network ({residual}) has no shortcut to fall back on, so it "
            "cannot be deleted; delete ODE steps only",
            residual=False,
        )
    field = transition.field
    a = field.preactivate(x) if transition.preactivated else x  # type: ignore[operator]
    out = transition.shortcut(a)
    return transition.projection(out) if transition.projection is not None else out


def lesioned(model: nn.Module, x: Tensor, deleted: Collection[int] = ()) -> Tensor:
    """Logits of ``model`` with the units ``deleted`` (indices into ``units(model)``) deleted.

    A step is skipped (x ↦ x), a residual transition replaced by its shortcut
    (``shortcut_only``); the module docstring states why. The model runs in the mode it
    is in (``lesion_accuracy`` sets eval mode). x: (batch, …) → logits (batch, classes).
    """
    net = _network(model)
    return _lesioned(net, x, _checked(deleted, len(units(net))))


def _checked(deleted: Collection[int], m: int) -> set[int]:
    gone = set(deleted)
    outside = sorted(i for i in gone if not 0 <= i < m)
    if outside:
        raise ConfigError(
            "{deleted} names unit " + str(outside[0]) + f", but the network has {m} units (0 to {m - 1})",
            deleted=sorted(gone),
        )
    return gone


def _lesioned(net: ResidualNetwork, x: Tensor, gone: set[int], intact: list[Tensor] | None = None) -> Tensor:
    """``lesioned``; with ``intact`` (the output of every unit of the intact network on
    this x) the units before the first deleted one are read from it, not run again."""
    first = min(gone, default=len(intact or ()))

    def visit(i: int, unit: Unit, z: Tensor) -> Tensor:
        if intact is not None and i < first:
            return intact[i]
        if i not in gone:
            return unit(z)
        if unit.kind == "transition":
            return shortcut_only(unit.module, z)  # type: ignore[arg-type]
        return z

    return walk(net, x, visit)


@torch.no_grad()
def _accuracies(
    model: nn.Module, x: Tensor, y: Tensor, lesions: Sequence[Collection[int]], batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """Accuracy of ``model`` on (x, y) under each set of deleted units, in eval mode.

    Batch by batch: the intact network's states are computed once per batch and every
    lesion starts from the state before its first deleted unit (the units before it are
    untouched, so their outputs are the same numbers). The model's mode is restored
    afterwards; nothing else of it changes (``walk`` calls ``ODEBlock.step``, which
    leaves the blocks' evaluation counters alone).
    """
    net = _network(model)
    m = len(units(net))
    sets = [_checked(gone, m) for gone in lesions]
    device, dtype = _device_dtype(net)
    x, y = x.to(device, dtype), y.to(device)
    correct = torch.zeros(len(sets), dtype=torch.int64, device=device)
    was_training = net.training
    net.eval()
    try:
        for start in range(0, len(y), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            intact: list[Tensor] = []

            def record(i: int, unit: Unit, z: Tensor, intact: list[Tensor] = intact) -> Tensor:
                intact.append(unit(z))
                return intact[-1]

            logits = walk(net, xb, record)
            for j, gone in enumerate(sets):
                out = _lesioned(net, xb, gone, intact) if gone else logits
                correct[j] += (out.argmax(dim=1) == yb).sum()
    finally:
        net.train(was_training)
    return correct.cpu().numpy() / max(len(y), 1)


def lesion_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, deleted: Collection[int] = (), batch_size: int = BATCH_SIZE
) -> float:
    """Accuracy of ``model`` on (x, y) with the units ``deleted`` deleted, in eval mode.

    x: (n, …) inputs, y: (n,) class indices; evaluated ``batch_size`` at a time.
    """
    return float(_accuracies(model, x, y, [deleted], batch_size)[0])


def single_lesions(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = BATCH_SIZE) -> xr.Dataset:
    """Veit et al. (2016), Fig. 3: the accuracy with each unit deleted alone.

    Returns the ``SINGLE`` variables over ``block`` (one per unit): ``lesion_accuracy``
    for the ODE steps (NaN at transitions), ``transition_lesion_accuracy`` for residual
    transitions replaced by their shortcut (NaN at steps, and at a plain net's
    transitions, which cannot be deleted), and ``is_transition``.
    x: (n, …) test inputs, y: (n,) class indices.
    """
    blocks = units(_network(model))
    m = len(blocks)
    kinds = np.array([int(u.kind == "transition") for u in blocks], dtype=np.int64)
    deletable = [i for i, u in enumerate(blocks) if u.kind == "step" or getattr(u.module, "shortcut", None) is not None]
    found = _accuracies(model, x, y, [{i} for i in deletable], batch_size)
    steps, transitions = np.full(m, np.nan), np.full(m, np.nan)
    for i, acc in zip(deletable, found, strict=True):
        (transitions if kinds[i] else steps)[i] = acc
    values = {"lesion_accuracy": steps, "transition_lesion_accuracy": transitions, "is_transition": kinds}
    return labelled(SINGLE, values, {"block": np.arange(m)})


def random_lesions(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    max_deleted: int,
    subsets: int,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
) -> xr.Dataset:
    """Veit et al. (2016), Fig. 4(a): the accuracy with k random ODE steps deleted, k = 0 … max_deleted.

    For each k, ``subsets`` sets of k distinct steps are drawn uniformly (numpy's generator
    seeded with ``seed``); when there are no more than ``subsets`` such sets, every one is
    evaluated, so k = 0 (the intact network) and k = all steps are exact. Transitions are
    never drawn (deleting one changes the state's shape; see ``single_lesions``). Returns
    the ``RANDOM`` variables over ``deleted`` = k: the mean accuracy over the sets, its
    sample standard deviation (ddof = 1; NaN for a single set) and the number of sets
    (0, with NaN accuracy, where k exceeds the network's steps).
    x: (n, …) test inputs, y: (n,) class indices.
    """
    if isinstance(max_deleted, bool) or not isinstance(max_deleted, int) or max_deleted < 0:
        raise ConfigError("{max_deleted} is not a number of steps: give an integer ≥ 0", max_deleted=max_deleted)
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise ConfigError("{subsets} is not a number of random sets: give a positive integer", subsets=subsets)
    steps = [i for i, u in enumerate(units(_network(model))) if u.kind == "step"]
    rng = np.random.default_rng(seed)
    chosen: list[list[tuple[int, ...]]] = []
    for k in range(max_deleted + 1):
        if k > len(steps):
            chosen.append([])
        elif math.comb(len(steps), k) <= subsets:
            chosen.append(list(itertools.combinations(steps, k)))
        else:
            chosen.append([tuple(sorted(rng.choice(steps, size=k, replace=False).tolist())) for _ in range(subsets)])
    flat = [set(s) for group in chosen for s in group]
    found = iter(_accuracies(model, x, y, flat, batch_size))
    mean, std = np.full(max_deleted + 1, np.nan), np.full(max_deleted + 1, np.nan)
    count = np.array([len(g) for g in chosen], dtype=np.int64)
    for k, n in enumerate(count):
        acc = np.array([next(found) for _ in range(n)])
        if n:
            mean[k] = acc.mean()
        if n >= 2:
            std[k] = acc.std(ddof=1)
    values = {"random_lesion_accuracy": mean, "random_lesion_accuracy_std": std, "random_lesion_subsets": count}
    return labelled(RANDOM, values, {"deleted": np.arange(max_deleted + 1)})


def _branches(unit: Unit) -> tuple[Branch, Branch, nn.Module | None] | None:
    """(skip S, residual branch R, projection π) with unit(x) = π(S(x) + R(x)); None if there is no such split.

    Euler steps of residual blocks (S the identity, R = h·F_n(t_n, ·)) and residual
    transitions (S the shortcut, R = h·F, both of the shared activated input).
    """
    if unit.kind == "transition":
        tr: Transition = unit.module  # type: ignore[assignment]
        if tr.shortcut is None:
            return None
        shortcut, field, h = tr.shortcut, tr.field, tr.step_size

        def pre(z: Tensor) -> Tensor:
            return field.preactivate(z) if tr.preactivated else z  # type: ignore[operator]

        def branch(z: Tensor) -> Tensor:
            a, t = pre(z), z.new_zeros(())
            return h * (field.residual(t, a) if tr.preactivated else field(t, a))  # type: ignore[operator]

        return (lambda z: shortcut(pre(z))), branch, tr.projection
    block = unit.module
    if unit.kind != "step" or not isinstance(block, ODEBlock) or not block.residual:
        return None
    tableau = block.method.tableau
    if tableau.stages != 1:  # one stage, b = (1,), c = (0,): forward Euler
        return None
    f, h, t = unit.field(), unit.step_size, unit.time
    assert f is not None

    def euler_branch(z: Tensor) -> Tensor:
        return h * f(z.new_tensor(t), z)

    return (lambda z: z), euler_branch, block.projection


def path_gradients(model: nn.Module, x: Tensor, y: Tensor) -> xr.Dataset:
    """Veit et al. (2016), Fig. 6: the loss gradient split by path length, exactly.

    ``path_gradient_norm`` over ``path_length`` k = 0 … m (m units): ‖g_k‖, the 2-norm of
    the gradient of the mean cross-entropy on (x, y) with respect to the first unit's
    input, summed over the C(m, k) paths that pass through exactly k residual branches
    (the module docstring derives it); Σ_k g_k is the whole gradient. All NaN unless
    every unit is an Euler step of a residual block or a residual transition. Works on a
    float64 copy in eval mode (per-sample Jacobians, batch-norm running statistics), so
    the model is untouched. x: (batch, …), y: (batch,) class indices.
    """
    net = _network(model)
    m = len(units(net))
    norms = np.full(m + 1, np.nan)
    if _splits(net) is not None:
        terms = _path_terms(copy.deepcopy(net).to(torch.float64).eval(), x, y)
        norms = np.array([float(g.norm()) for g in terms])
    return labelled(PATHS, {"path_gradient_norm": norms}, {"path_length": np.arange(m + 1)})


def _splits(net: ResidualNetwork) -> list[tuple[Branch, Branch, nn.Module | None]] | None:
    """``_branches`` of every unit, or None when a unit (or a module of the body that is no unit) has none."""
    splits = [_branches(u) for u in units(net)]
    if not all(isinstance(b, (ODEBlock, Transition)) for b in net.body):
        return None
    found = [s for s in splits if s is not None]
    return found if len(found) == len(splits) else None


def _path_terms(net: ResidualNetwork, x: Tensor, y: Tensor) -> list[Tensor]:
    """g_0 … g_m of ``path_gradients`` as tensors shaped like the first unit's input.

    net: in the dtype and mode to differentiate in, every unit split by ``_branches``.
    """
    splits = _splits(net)
    if splits is None:
        raise ValueError("path gradients need Euler steps of residual blocks and residual transitions only")
    m = len(splits)
    device, dtype = _device_dtype(net)
    x, y = x.to(device, dtype), y.to(device)
    states: list[Tensor] = []

    def record(i: int, unit: Unit, z: Tensor) -> Tensor:
        states.append(z)
        out = unit(z)
        if i == m - 1:
            states.append(out)
        return out

    with torch.no_grad():
        walk(net, x, record)
    with torch.enable_grad():
        last = states[-1].clone().requires_grad_(True)
        (top,) = torch.autograd.grad(F.cross_entropy(net.head(last), y), last)
        # g[k]: the summed gradient of the paths through k branches so far (None: no such path yet).
        g: list[Tensor | None] = [top] + [None] * m
        for i in reversed(range(m)):
            skip, branch, projection = splits[i]
            z = states[i].clone().requires_grad_(True)
            s, r = skip(z), branch(z)
            summed = (s + r).detach().requires_grad_(True)
            out = projection(summed) if projection is not None else summed
            new: list[Tensor | None] = [None] * (m + 1)
            for k, gk in enumerate(g):
                if gk is None:
                    continue
                v = gk if projection is None else torch.autograd.grad(out, summed, gk, retain_graph=True)[0]
                through_skip = v if s is z else torch.autograd.grad(s, z, v, retain_graph=True)[0]
                (through_branch,) = torch.autograd.grad(r, z, v, retain_graph=True)
                here, longer = new[k], new[k + 1]
                new[k] = through_skip if here is None else here + through_skip
                new[k + 1] = through_branch if longer is None else longer + through_branch
            g = new
    terms = [gk for gk in g if gk is not None]
    assert len(terms) == m + 1  # every unit has a skip and a branch, so every length occurs
    return terms
