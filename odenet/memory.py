"""Memory of one training step: what autograd keeps for the backward pass.

Chen et al. (2018, Table 1) compare ResNets, RK-Nets and ODE-Nets by memory: O(L) for
networks that store every layer's activations, O(1) in the number of function
evaluations for the adjoint method, which stores none inside the solve. The quantity
behind that column is the size of the tensors autograd saves for the backward pass.
``saved_activation_peak`` measures it directly, on any device, with
``torch.autograd.graph.saved_tensors_hooks``: every saved tensor is counted while the
graph holds it, once per storage, parameters excluded. Unlike the process's resident
memory it is deterministic and does not depend on the allocator; on CUDA the
allocator's peak is available as well (``cuda_peak``).
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cuda_peak", "saved_activation_peak"]


class _Ledger:
    """Live saved storages (key → [references, bytes]) and the peak of their total."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.live: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0

    def add(self, key: int, nbytes: int) -> None:
        entry = self.live.setdefault(key, [0, nbytes])
        if entry[0] == 0:
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        entry[0] += 1

    def drop(self, key: int) -> None:
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[key]


class _Saved:
    """What autograd holds instead of the tensor: the tensor, and a finaliser that books it out."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: Tensor, ledger: _Ledger) -> None:
        self.tensor = tensor.detach()  # the tensor itself, if an output, would make a cycle through its grad_fn
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key and key not in ledger.exclude:
            ledger.add(key, storage.nbytes())
            weakref.finalize(self, ledger.drop, key)


def saved_activation_peak(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """Peak bytes of the tensors autograd holds for backward during one training step.

    One forward and backward pass of the mean cross-entropy on (x, y), in train mode, on
    a copy of ``model`` (its weights and batch-norm statistics are untouched). Parameters
    are not counted (they are there anyway); what remains is the activation memory that
    grows with depth and with the number of solver steps, except under the adjoint method.
    x: (batch, …), y: (batch,) class indices.
    """
    net = copy.deepcopy(model).train()
    exclude = {p.untyped_storage().data_ptr() for p in net.parameters()}
    ledger = _Ledger(exclude)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: _Saved(t, ledger), lambda s: s.tensor):
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        del loss
    return ledger.peak


def cuda_peak(model: nn.Module, x: Tensor, y: Tensor) -> int | None:
    """The CUDA allocator's peak over one training step of a copy of ``model`` (None off CUDA)."""
    if x.device.type != "cuda":
        return None
    net = copy.deepcopy(model).train()
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    F.cross_entropy(net(x), y).backward()
    torch.cuda.synchronize(x.device)
    return int(torch.cuda.max_memory_allocated(x.device))
