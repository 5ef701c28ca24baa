"""``compile=True`` / ``--compile``: torch.compile for fixed-step networks, eager with a notice otherwise."""

from __future__ import annotations

import warnings

import pytest
import torch
from click.testing import CliRunner
from torch._dynamo.utils import counters

from odenet.blocks import ode_blocks
from odenet.errors import ConfigError
from odenet.models import mlp_resnet
from odenet.train import CompileNotice, compile_model
from odenet_cli.main import main


def _net(solver: str = "rk4", memory: str = "backprop") -> torch.nn.Module:
    torch.manual_seed(0)
    return mlp_resnet(6, 3, depth=3, width=8, solver=solver, activation="tanh", memory=memory)  # type: ignore[arg-type]


def test_compiled_fixed_step_network_matches_eager_and_compiles_once_per_shape():
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    eager, twin = _net(), _net()
    compiled = compile_model(twin)
    assert compiled is twin and all(b.compiled_steps for b in ode_blocks(twin))
    out_e, out_c = eager(x), compiled(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    for p, q in zip(eager.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
    block_e, block_c = eager.body[0], twin.body[0]
    assert (block_c.nfe_forward, block_c.nfe_backward) == (block_e.nfe_forward, block_e.nfe_backward) == (12, 12)

    # one graph for all three steps (per-step weights are graph inputs), and the next cell
    # of a study (new weights, same shapes) reuses it
    graphs = counters["stats"]["unique_graphs"]
    another = compile_model(_net())
    another(x).sum().backward()
    assert counters["stats"]["unique_graphs"] == graphs


def test_compile_steps_refuses_a_block_it_cannot_trace():
    block = _net("dopri5").body[0]
    with pytest.raises(ConfigError, match="adaptive"):
        block.compile_steps()


@pytest.mark.parametrize(
    "solver, memory, reason", [("dopri5", "backprop", "adaptive"), ("euler", "adjoint", "adjoint")]
)
def test_untraceable_blocks_run_eagerly_with_a_notice(solver, memory, reason):
    net = _net(solver, memory)
    with pytest.warns(CompileNotice, match=reason):
        assert compile_model(net) is net


def test_cli_compile_trains_and_adaptive_falls_back_with_one_line(tmp_path):
    runner = CliRunner()
    common = ["run", "--dataset", "spirals", "--depth", "2", "--epochs", "1", "--no-progress", "--compile"]
    with warnings.catch_warnings():
        ok = runner.invoke(main, [*common, "--solver", "euler"])
        assert ok.exit_code == 0, ok.output
        assert "test accuracy" in ok.output and "note:" not in ok.output
        fallback = runner.invoke(main, [*common, "--solver", "dopri5"])
    assert fallback.exit_code == 0, fallback.output
    notes = [line for line in fallback.output.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: --compile skipped, training eagerly: dopri5 is adaptive: its step sizes are chosen on the host"
    ]
