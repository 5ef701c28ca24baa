"""Datasets: embedded ones, and torchvision folders written by the test in the real format."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from odenet.data import DataError, augment_crop_flip, batches, load_dataset, spheres


def test_digits_is_the_real_uci_set_with_a_fixed_stratified_split():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=0)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_test) == 1797  # the UCI set shipped with scikit-learn
    torch.testing.assert_close(a.x_test, b.x_test)
    c = load_dataset("digits", seed=1)
    assert not torch.equal(a.y_test, c.y_test)
    # Stratified: every class holds ~20% of its members out.
    assert (a.y_test.bincount(minlength=10) >= 34).all()
    # Standardised with training statistics.
    assert abs(a.x_train.mean().item()) < 1e-5 and a.x_train.std().item() == pytest.approx(1, abs=1e-3)


def test_mnist1d_is_the_standard_4000_1000_split():
    data = load_dataset("mnist1d")
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.kind == "vector" and set(data.y_train.unique().tolist()) == set(range(10))


@pytest.mark.parametrize("dim", [2, 5])
def test_spheres_radii_follow_dupont_et_al(dim):
    data = spheres(dim=dim, n=400)
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    r = x.norm(dim=1)
    assert r[y == 0].max() <= 0.5 and r[y == 1].min() >= 1.0 and r[y == 1].max() <= 1.5
    assert x.shape[1] == dim


def test_batches_cover_every_example_once_and_follow_the_seed():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    seen = torch.cat([yb for _, yb in batches(x, y, 3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    again = torch.cat([yb for _, yb in batches(x, y, 3, torch.Generator().manual_seed(0))])
    assert torch.equal(seen, again)


def test_crop_flip_is_a_shifted_possibly_mirrored_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    out = augment_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [
            padded[i, :, r : r + 6, c : c + 6].flip(-1) if f else padded[i, :, r : r + 6, c : c + 6]
            for r in range(5)
            for c in range(5)
            for f in (False, True)
        ]
        assert any(torch.equal(out[i], w) for w in windows)


# ----------------------------------------------------------- torchvision folders
def _write_cifar(root: Path, n: int = 20, hundred: bool = False) -> None:
    rng = np.random.default_rng(0)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    classes = 100 if hundred else 10
    names = ["train", "test"] if hundred else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = (
        {"fine_label_names": [f"c{i}" for i in range(100)]}
        if hundred
        else {"label_names": [f"c{i}" for i in range(10)]}
    )
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))


def _write_idx(root: Path, folder: str, n_train: int = 12, n_test: int = 5) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_is_read_from_the_python_pickles(tmp_path, name):
    _write_cifar(tmp_path, n=20, hundred=name == "cifar100")
    data = load_dataset(name, tmp_path)
    assert data.x_train.shape == ((100 if name == "cifar10" else 20), 3, 32, 32)
    assert data.x_test.shape == (20, 3, 32, 32)
    assert data.num_classes == (10 if name == "cifar10" else 100) and data.augment == "crop_flip"
    # The first training image is the first row of the first pickle in (C, H, W) order,
    # up to the per-channel standardisation (an affine map per channel).
    first_file = "cifar-10-batches-py/data_batch_1" if name == "cifar10" else "cifar-100-python/train"
    raw = pickle.loads((tmp_path / first_file).read_bytes())
    first = torch.as_tensor(raw["data"][0].reshape(3, 32, 32), dtype=torch.float32)
    for ch in range(3):
        corr = torch.corrcoef(torch.stack([first[ch].flatten(), data.features(data.x_train)[0, ch].flatten()]))[0, 1]
        assert corr == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_is_read_from_idx_files(tmp_path, name, folder):
    _write_idx(tmp_path, folder)
    data = load_dataset(name, tmp_path)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.augment == "none"


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion-mnist"])
def test_missing_files_give_one_line_naming_the_layout(tmp_path, name):
    with pytest.raises(DataError, match="expected DIR/") as info:
        load_dataset(name, tmp_path)
    assert "\n" not in str(info.value)


def test_no_data_dir_and_unknown_names(tmp_path):
    with pytest.raises(DataError, match="set data_dir to a folder DIR with"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("cifar10", tmp_path / "nothing")
    with pytest.raises(DataError, match="choose one of: digits"):
        load_dataset("imagenet")


def test_corrupt_file_is_a_data_error(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="could not be read"):
        load_dataset("cifar10", tmp_path)
