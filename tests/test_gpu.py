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
