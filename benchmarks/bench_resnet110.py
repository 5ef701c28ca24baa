"""Training-step speed: odenet's pre-activation ResNet-110 vs a hand-written PyTorch one.

Compared: one full training step — forward, cross-entropy loss, backward, SGD step
(momentum 0.9) — of

* ``odenet``: ``odenet.models.cifar_resnet(110, solver="euler", block="preact")``, whose
  18 blocks per stage are a ``Transition`` plus the Euler steps of one ``ODEBlock`` over a
  ``StepwiseField``, and
* ``hand-written`` (the reference): a plain PyTorch pre-activation ResNet-110 (He et al.
  2016, "Identity mappings in deep residual networks") written below the textbook way: a
  ``PreActBlock`` whose forward is ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``, option-A
  (zero-padding) shortcuts.

Both have exactly the same layers (1,727,962 parameters, asserted); the hand-written model
is loaded with odenet's initial weights and the two logits are checked to agree, so both
do the same arithmetic on the same random CIFAR-shaped batch (64×3×32×32).
Ratio = hand-written median / odenet median (≥ 1: odenet is as fast or faster; target
≥ 0.97). Case ``train-step`` runs both eagerly; case ``train-step (compiled)`` runs
``torch.compile(model)`` of each (compile time reported apart; only with
``--compile-resnet``: compiling two 110-layer training steps takes minutes on a CPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.suite import Case, Contender, Options
from odenet.models import cifar_resnet

# Exact parameter counts with option-A shortcuts (the published ResNet-20 … ResNet-110).
EXPECTED_PARAMETERS = {20: 269_722, 110: 1_727_962}
TARGET = 0.97


# ----------------------------------------------------------------- the hand-written model
class PreActBlock(nn.Module):
    """BN–ReLU–conv3×3–BN–ReLU–conv3×3 added to the identity (He et al. 2016)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


class PreActTransition(nn.Module):
    """First block of stages 2 and 3: a = ReLU(BN(x)); conv(ReLU(BN(conv_s2(a)))) + shortcut(a).

    Shortcut option A: a[:, :, ::2, ::2] zero-padded in channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        shortcut = F.pad(a[:, :, ::2, ::2], (0, 0, 0, 0, *self.pad))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation CIFAR ResNet of depth 6n+2 (n = 18 for ResNet-110)."""

    def __init__(self, depth: int = 110, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        channels = width
        for stage in range(3):
            out = width * 2**stage
            blocks = n
            if out != channels:
                layers.append(PreActTransition(channels, out))
                channels = out
                blocks -= 1
            layers += [PreActBlock(channels) for _ in range(blocks)]
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.conv(x))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# --------------------------------------------------------------------------- utilities
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy parameters and buffers in registration order (the two models list them alike)."""
    for kind in ("parameters", "buffers"):
        src = list(getattr(source, kind)())
        dst = list(getattr(target, kind)())
        assert len(src) == len(dst), f"{kind}: {len(src)} vs {len(dst)}"
        for s, d in zip(src, dst, strict=True):
            assert s.shape == d.shape, f"{kind}: shape {tuple(s.shape)} vs {tuple(d.shape)}"
            d.copy_(s)


def make_step(model: Callable[[Tensor], Tensor], parameters: list[nn.Parameter], x: Tensor, y: Tensor, lr: float):
    """One training step of ``model`` (SGD, momentum 0.9) on the batch (x, y)."""
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9)

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def cases(options: Options) -> list[Case]:
    """The eager case, and the compiled one when ``options.compile_resnet``."""
    depth, batch = (20, 4) if options.quick else (110, 64)
    repeats, warmup = (2, 1) if options.quick else (20, 3)
    device = options.torch_device
    ode = cifar_resnet(depth, solver="euler", block="preact")
    hand = PreActResNet(depth)
    n_ode, n_hand = count_parameters(ode), count_parameters(hand)
    copy_weights(ode, hand)
    ode.to(device).train()
    hand.to(device).train()
    g = torch.Generator().manual_seed(options.seed)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)

    def check() -> dict[str, object]:
        assert n_ode == EXPECTED_PARAMETERS[depth], f"odenet ResNet-{depth} has {n_ode:,} parameters"
        assert n_hand == EXPECTED_PARAMETERS[depth], f"hand-written ResNet-{depth} has {n_hand:,} parameters"
        # Same weights, same batch → same logits (train-mode BN: batch statistics).
        with torch.no_grad():
            diff = (ode(x) - hand(x)).abs().max().item()
        assert diff < 1e-3, f"the two models disagree: max |Δlogit| = {diff:g}"
        return {"parameters": n_ode, "max |Δlogit| at init": float(f"{diff:.3g}")}

    description = f"ResNet-{depth} pre-activation, training step (SGD, momentum 0.9), batch {batch}×3×32×32"
    lr = 0.01
    out = [
        Case(
            "resnet110",
            "train-step",
            description + ", eager",
            "hand-written",
            (
                Contender("odenet", make_step(ode, list(ode.parameters()), x, y, lr)),
                Contender("hand-written", make_step(hand, list(hand.parameters()), x, y, lr)),
            ),
            repeats,
            warmup,
            {"odenet": TARGET},
            check,
        )
    ]
    names = ("odenet (compiled)", "hand-written (compiled)")
    if not (options.compile and options.compile_resnet):
        why = "left out (--no-compile)" if not options.compile else "left out (needs --compile-resnet)"
        out[0] = dataclasses.replace(out[0], skipped=tuple((n, why) for n in names))
    else:
        compiled = {m: torch.compile(m, backend=options.compile_backend) for m in (ode, hand)}
        out.append(
            Case(
                "resnet110",
                "train-step (compiled)",
                description + ", torch.compile(model)",
                names[1],
                (
                    Contender(names[0], make_step(compiled[ode], list(ode.parameters()), x, y, lr), compiled=True),
                    Contender(names[1], make_step(compiled[hand], list(hand.parameters()), x, y, lr), compiled=True),
                ),
                repeats,
                warmup,
                {names[0]: TARGET},
                check,
            )
        )
    return out
