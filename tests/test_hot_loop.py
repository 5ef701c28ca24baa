"""The training hot loop: uint8 images normalised per batch, randomness drawn on the data's
device, and no host read per batch (odenet issue 11).

On the CPU a seed must give the batch order and crops it always gave (the canonical
results were made on the CPU), and per-batch normalisation must give the values that
normalising the whole set up front gives. The CUDA check of the same loop under
``torch.cuda.set_sync_debug_mode("error")`` is in ``test_gpu.py``.
"""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
import tqdm.auto
from torch.utils._python_dispatch import TorchDispatchMode

from odenet.data import TensorData, augment_crop_flip, batches, load_dataset
from odenet.data.vision import pixel_statistics
from odenet.models import cifar_resnet
from odenet.train import TrainConfig, train

from .test_data import _write_cifar

aten = torch.ops.aten


def pixels(n_train: int = 64, n_test: int = 32, channels: int = 3, size: int = 8, seed: int = 0) -> TensorData:
    """A tiny uint8 image dataset with its per-channel statistics, augmented like CIFAR."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, channels, size, size), dtype=torch.uint8, generator=g)
    # Channel 0 is darker for label 1, so there is something to learn.
    y = torch.randint(0, 2, (n_train + n_test,), generator=g)
    x[:, 0] = (x[:, 0] // 2 + 128 * (1 - y)[:, None, None]).to(torch.uint8)
    mean, std = pixel_statistics(x[:n_train])
    return TensorData("pixels", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 2, "crop_flip", mean, std)


# ------------------------------------------------------------------ uint8 storage
def test_vision_datasets_are_held_as_uint8_pixels_with_training_statistics(tmp_path):
    _write_cifar(tmp_path, n=20)
    data = load_dataset("cifar10", tmp_path)
    assert data.x_train.dtype == torch.uint8 and data.x_test.dtype == torch.uint8
    assert data.x_train.shape == (100, 3, 32, 32) and data.kind == "image"
    # The statistics are the training split's, per channel, in pixel units (n − 1 for std).
    exact = data.x_train.double()
    torch.testing.assert_close(data.mean, exact.mean(dim=(0, 2, 3), keepdim=True).float(), rtol=0, atol=0)
    torch.testing.assert_close(data.std, exact.std(dim=(0, 2, 3), keepdim=True).float())
    # The first training image is the first row of the first pickle, in (C, H, W) order.
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    assert torch.equal(data.x_train[0], torch.as_tensor(raw["data"][0].reshape(3, 32, 32)))
    # Features are standardised with those statistics: mean 0, std 1 per channel.
    features = data.features(data.x_train)
    assert features.dtype == torch.float32
    torch.testing.assert_close(
        features.double().mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        features.double().std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_batch_normalisation_equals_normalising_the_whole_set(dtype):
    data = pixels().to("cpu", dtype)
    assert data.x_train.dtype == torch.uint8 and data.mean.dtype == dtype
    whole = (data.x_train.to(dtype) - data.mean) / data.std  # up front, the old loader's formula
    assert whole.dtype == dtype
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(1))
    for idx in order.split(10):
        xb = data.features(data.x_train[idx])
        assert xb.dtype == dtype and torch.equal(xb, whole[idx])  # exactly, not approximately
    assert torch.equal(
        torch.cat([data.features(xb) for xb, _ in batches(data.x_train, data.y_train, 7, shuffle=False)]), whole
    )


def test_to_keeps_pixels_uint8_and_casts_float_features():
    data = pixels()
    moved = data.to("cpu", torch.float64)
    assert moved.x_train.dtype == moved.x_test.dtype == torch.uint8
    assert moved.mean.dtype == moved.std.dtype == torch.float64
    assert moved.features(moved.x_test).dtype == torch.float64
    assert data.features(data.x_test, torch.float64).dtype == torch.float64
    digits = load_dataset("digits")
    assert digits.mean is None and digits.x_train.dtype == torch.float32
    # Float features are read as they are: the embedded datasets' numbers are untouched.
    assert digits.features(digits.x_train) is digits.x_train
    assert digits.to("cpu", torch.float64).x_train.dtype == torch.float64


def test_pixels_without_statistics_are_refused():
    data = pixels()
    with pytest.raises(ValueError, match="mean and std"):
        dataclasses.replace(data, mean=None, std=None)
    with pytest.raises(ValueError, match="give both"):
        dataclasses.replace(data, std=None)
    with pytest.raises(ValueError, match="per-channel"):
        dataclasses.replace(data, mean=data.mean[:, :2], std=data.std[:, :2])


# ------------------------------------------------- randomness drawn on the device
def reference_epoch(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, pad: int = 4):
    """The batches and crops as odenet drew them before issue 11: every random number on
    the CPU generator (randperm once, then per batch randint offsets and rand flips),
    the crop by slicing the zero-padded image and flipping it."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    h, w = x.shape[-2:]
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        offsets = torch.randint(0, 2 * pad + 1, (2, len(yb)), generator=g)
        flips = torch.rand(len(yb), generator=g) < 0.5
        padded = F.pad(xb, (pad, pad, pad, pad))
        crops = []
        for i in range(len(yb)):
            r, c = int(offsets[0, i]), int(offsets[1, i])
            window = padded[i, :, r : r + h, c : c + w]
            crops.append(window.flip(-1) if flips[i] else window)
        yield torch.stack(crops), yb


@pytest.mark.parametrize("batch_size", [16, 23])
def test_cpu_batch_order_and_crops_are_those_of_the_reference(batch_size):
    data = pixels()
    x = data.features(data.x_train)
    generator = torch.Generator(device=x.device).manual_seed(5)  # as the training loop makes it
    ours = [(augment_crop_flip(xb, generator), yb) for xb, yb in batches(x, data.y_train, batch_size, generator)]
    ref = list(reference_epoch(x, data.y_train, batch_size, seed=5))
    assert len(ours) == len(ref) == math.ceil(64 / batch_size)
    for (xb, yb), (xr, yr) in zip(ours, ref, strict=True):
        assert torch.equal(yb, yr) and torch.equal(xb, xr)


def test_without_a_generator_the_data_devices_default_one_draws():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    # No generator: drawn on the data's device from torch's default generator.
    assert sorted(torch.cat([yb for _, yb in batches(x, y, 4)]).tolist()) == list(range(10))
    assert augment_crop_flip(torch.zeros(3, 1, 4, 4), pad=1).shape == (3, 1, 4, 4)


# --------------------------------------------------------------- training on uint8
def test_training_on_uint8_pixels_equals_training_on_features_normalised_up_front():
    data = pixels()
    up_front = TensorData(
        "features", data.features(data.x_train), data.y_train, data.features(data.x_test), data.y_test, 2, "crop_flip"
    )
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, device="cpu", threads=1)
    histories = []
    for d in (data, up_front):
        torch.manual_seed(0)
        histories.append(train(cifar_resnet(8, num_classes=2, width=4), d, config, progress=False))
    a, b = histories
    assert a.epochs == 2 and not a.diverged
    assert all(math.isfinite(v) for v in (*a.train_loss, *a.test_loss, *a.grad_norm))
    # Same values in, same order, same crops: the same run, bit for bit.
    for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "grad_norm", "lr"):
        assert a.series[name] == b.series[name], name


# -------------------------------------------------------------- no per-batch reads
class HostReads(TorchDispatchMode):
    """Counts the operations that copy a tensor's value to the host: ``item()``,
    ``bool()``, ``int()``, ``float()`` (all ``_local_scalar_dense``), ``torch.equal``,
    and the data-dependent shapes (nonzero, masked_select, boolean indexing) that make a
    CUDA stream wait. On CUDA each is a synchronisation; on the CPU they are counted the same."""

    SCALAR = (aten._local_scalar_dense, aten.equal, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in self.SCALAR:
            self.count += 1
        elif func.overloadpacket in (aten.index, aten.index_put_, aten.index_put):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            self.count += any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
        return func(*args, **kwargs)


def count_host_reads(monkeypatch, batch_size: int, epochs: int = 1, progress: bool = False) -> tuple[int, int]:
    """(host reads, batches per epoch) of training a ResNet-8 on uint8 pixels."""
    data = pixels()
    tolist = torch.Tensor.tolist
    reads = HostReads()

    def counted_tolist(self):
        reads.count += 1
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    torch.manual_seed(0)
    model = cifar_resnet(8, num_classes=2, width=4)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.05, device="cpu", threads=1)
    with reads:
        history = train(model, data, config, progress=progress)
    monkeypatch.undo()
    assert history.epochs == epochs and not history.diverged
    return reads.count, math.ceil(len(data.y_train) / batch_size)


def test_the_batch_loop_reads_nothing_from_the_host(monkeypatch):
    few, n_few = count_host_reads(monkeypatch, batch_size=32)
    many, n_many = count_host_reads(monkeypatch, batch_size=4)
    assert (n_few, n_many) == (2, 16)
    # Per epoch: the epoch's loss, accuracy and gradient norm, and evaluate's loss and
    # accuracy: five reads, however many batches the epoch has.
    assert few == many == 5
    assert count_host_reads(monkeypatch, batch_size=4, epochs=2)[0] == 2 * 5
    # The counter does see reads in the loop: a shown progress bar reads loss and
    # accuracy at each refresh (every batch at 16 batches per epoch).
    shown, _ = count_host_reads(monkeypatch, batch_size=4, progress=True)
    assert shown == 5 + 2 * n_many


def test_inside_the_batch_loop_the_count_is_zero(monkeypatch):
    """The batch loop alone, every batch of it: the lifetime of the epoch's progress bar
    (made just before the loop, closed in its ``finally``), the window the CUDA test in
    test_gpu.py runs under ``set_sync_debug_mode("error")``."""

    windows: list[HostReads] = []

    class Window:
        updates = 0

        def __init__(self, *args, **kwargs):
            self.disable = True
            windows.append(HostReads())
            windows[-1].__enter__()

        def update(self, n=1):
            Window.updates += 1

        def close(self):
            windows[-1].__exit__(None, None, None)

    monkeypatch.setattr(tqdm.auto, "tqdm", Window)
    torch.manual_seed(0)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.05, device="cpu", threads=1)
    history = train(cifar_resnet(8, num_classes=2, width=4), pixels(), config, progress=False)
    assert history.epochs == 2 and len(windows) == 2 and Window.updates == 2 * 64 // 8
    assert [w.count for w in windows] == [0, 0]
