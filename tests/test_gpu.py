"""CUDA path: the same numbers on the GPU as on the CPU. Skipped cleanly without CUDA."""

from __future__ import annotations

import pytest
import torch

import odenet
from odenet.models import cifar_resnet

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_block_on_cuda_matches_cpu_in_float64(solver):
    field = odenet.MLPField(6, 12, activation="tanh").double()
    x = torch.randn(8, 6, dtype=torch.float64)
    block = odenet.ODEBlock(field, solver, steps=4, step_size=0.25, rtol=1e-9, atol=1e-9)
    cpu = block(x)
    gpu = block.cuda()(x.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)


def test_resnet_trains_a_step_on_cuda():
    model = cifar_resnet(20, solver="rk4").cuda().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(dim=1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_batch_loop_makes_no_host_sync(monkeypatch, precision):
    """odenet issue 11: every batch of an epoch of a ResNet-8 on uint8 CIFAR-shaped images
    runs under ``torch.cuda.set_sync_debug_mode("error")``, so a host synchronisation in
    the batch loop (an ``.item()``, a blocking copy to or from the host, a data-dependent
    shape) raises.

    The batch loop is exactly the lifetime of the epoch's progress bar (made just before
    the loop, closed in its ``finally``): a stand-in for tqdm switches the mode on when it
    is made and off when it is closed, so the per-epoch reads (history, evaluation) fall
    outside. Epoch 1 warms CUDA up (library handles, cached time tables); every batch of
    epoch 2 is checked.
    """
    import math

    import tqdm.auto

    from odenet.data import TensorData
    from odenet.data.vision import pixel_statistics
    from odenet.train import TrainConfig, train

    class Guard:
        made = updates = 0

        def __init__(self, *args, **kwargs):
            Guard.made += 1
            self.disable = True  # progress off: the loop makes no display reads
            self.checked = Guard.made == 2
            if self.checked:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")

        def update(self, n=1):
            Guard.updates += self.checked

        def set_postfix(self, **kwargs):
            raise AssertionError("a progress read with progress off")

        def close(self):
            torch.cuda.set_sync_debug_mode("default")

        @staticmethod
        def write(*args, **kwargs):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Guard)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (320, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (320,), generator=g)
    mean, std = pixel_statistics(x[:256])
    data = TensorData("pixels", x[:256], y[:256], x[256:], y[256:], 10, "crop_flip", mean, std)
    torch.manual_seed(0)
    config = TrainConfig(epochs=2, batch_size=32, device="cuda", precision=precision)
    try:
        history = train(cifar_resnet(8), data, config, progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert Guard.made == 2 and Guard.updates == 256 // 32  # every batch of epoch 2 ran under "error"
    assert history.epochs == 2 and not history.diverged
    assert all(math.isfinite(v) for v in (*history.train_loss, *history.test_loss))
