"""Training-step speed: odenet's pre-activation ResNet-110 vs a hand-written PyTorch one.

Compared: one full training step — forward, cross-entropy loss, backward, SGD step
(momentum 0.9) — of

* ``odenet.models.cifar_resnet(110, solver="euler", block="preact")``, whose 18 blocks
  per stage are a ``Transition`` plus the Euler steps of one ``ODEBlock`` over a
  ``StepwiseField``, and
* a plain PyTorch pre-activation ResNet-110 (He et al. 2016, "Identity mappings in deep
  residual networks") written below the textbook way: a ``PreActBlock`` whose forward is
  ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``, option-A (zero-padding) shortcuts.

Both have exactly the same layers (1,727,962 parameters, asserted); the hand-written
model is loaded with odenet's initial weights and the two logits are checked to agree,
so both do the same arithmetic. Same process, same random CIFAR-shaped batch; after
warm-up the two models alternate step by step (the order flips every round so slow
drift of the machine hits both alike) and the median step time of each is reported,
with ratio = hand-written median / odenet median (>= 1: odenet is as fast or faster;
target >= 0.97).

Run:
    python benchmarks/bench_resnet110.py
    python benchmarks/bench_resnet110.py --steps 30 --batch-size 128 --threads 2
    python benchmarks/bench_resnet110.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from timing import NOISY, load_average, spread, sync
from torch import Tensor, nn

import odenet
from odenet.models import cifar_resnet

EXPECTED_PARAMETERS = 1_727_962
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


def make_step(model: nn.Module, x: Tensor, y: Tensor, lr: float):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def timed(step, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per model (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first (default 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for but CUDA is not available")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    ode = cifar_resnet(110, solver="euler", block="preact")
    hand = PreActResNet(110)
    n_ode, n_hand = count_parameters(ode), count_parameters(hand)
    assert n_ode == EXPECTED_PARAMETERS, f"odenet ResNet-110 has {n_ode:,} parameters"
    assert n_hand == EXPECTED_PARAMETERS, f"hand-written ResNet-110 has {n_hand:,} parameters"
    copy_weights(ode, hand)
    ode.to(device).train()
    hand.to(device).train()

    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)

    # Same weights, same batch → same logits (train-mode BN: batch statistics).
    with torch.no_grad():
        diff = (ode(x) - hand(x)).abs().max().item()
    assert diff < 1e-3, f"the two models disagree: max |Δlogit| = {diff:g}"

    print(
        f"odenet {odenet.__version__}, torch {torch.__version__}, {platform.machine()} "
        f"{platform.processor() or platform.system()}, device {device}, threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} cores, load average {load_average()}"
    )
    print(
        f"ResNet-110 pre-activation, {n_ode:,} parameters each, batch {args.batch_size}×3×32×32, "
        f"max |Δlogit| at init = {diff:.2e}"
    )

    steps = {"odenet": make_step(ode, x, y, args.lr), "hand-written": make_step(hand, x, y, args.lr)}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for i in range(args.steps):
        for name in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(steps[name], device))

    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        print(
            f"{name:>13}: median {med[name] * 1e3:8.1f} ms  (min {min(ts) * 1e3:.1f}, "
            f"quartiles {q[0] * 1e3:.1f}–{q[2] * 1e3:.1f}, n={len(ts)})"
        )
    ratio = med["hand-written"] / med["odenet"]
    # Cross-checks, less sensitive to other work on the machine: the ratio of the fastest
    # steps, and the median over rounds of the ratio within a round (adjacent steps).
    fastest = min(times["hand-written"]) / min(times["odenet"])
    paired = statistics.median(h / o for h, o in zip(times["hand-written"], times["odenet"], strict=True))
    print(f"cross-checks (hand-written / odenet): ratio of minima {fastest:.3f}, median paired ratio {paired:.3f}")
    noisy = [name for name, ts in times.items() if len(ts) > 1 and spread(ts) > NOISY]
    if noisy:
        print(
            f"WARNING: noisy timings for {', '.join(noisy)} (upper/lower quartile > {NOISY}): another "
            "process was probably competing for the cores; rerun on an idle machine"
        )
    print(f"load average after the run: {load_average()}")
    print(f"ratio (hand-written / odenet) = {ratio:.3f}  (target >= {TARGET})")
    return ratio


if __name__ == "__main__":
    main()
