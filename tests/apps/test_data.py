"""Data loaders: the embedded digits split, users' .npz and IDX files, and their errors."""

import gzip
import struct

import numpy as np
import pytest
import torch

from pyro_reparam.apps.data import load_digits, load_idx, load_images, load_npz


def test_digits_split_is_fixed_stratified_and_scaled():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.images.shape[1] == 64 and train.shape == (8, 8)
    assert train.images.min() >= 0 and train.images.max() == 1
    assert torch.equal(load_digits("test").images, test.images)  # same split every time
    frac = torch.bincount(test.labels, minlength=10).float() / len(test)
    assert (frac - 0.1).abs().max() < 0.01
    assert set(train.binarized().images.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="split must be"):
        load_digits("valid")


def test_npz_round_trip_and_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", images=images, labels=np.arange(5))
    data = load_images(tmp_path / "ok.npz")
    assert data.images.shape == (5, 16) and data.shape == (4, 4)
    assert torch.allclose(data.images * 255, torch.from_numpy(images.reshape(5, -1)).float())
    assert data.labels.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "two.npz", a=images, b=images)
    with pytest.raises(
        ValueError, match=r"say which holds the images with key=\.\.\. \(--data-key"
    ):
        load_npz(tmp_path / "two.npz")
    np.savez(tmp_path / "xy.npz", x=images, y=np.arange(5))
    data = load_npz(tmp_path / "xy.npz")  # the usual names, found without a key
    assert data.images.shape == (5, 16) and data.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"no array 'lbl' for the labels.*--label-key"):
        load_npz(tmp_path / "xy.npz", label_key="lbl")
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(1).bytes(256))
    with pytest.raises(ValueError, match=r"not a readable \.npz archive"):
        load_npz(tmp_path / "noise.npz")
    np.savez(tmp_path / "range.npz", images=np.full((2, 4, 4), 3.0))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        load_npz(tmp_path / "range.npz")
    np.savez(tmp_path / "nan.npz", images=np.full((2, 4, 4), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        load_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "rect.npz", images=np.zeros((2, 15)))
    with pytest.raises(ValueError, match="not square"):
        load_npz(tmp_path / "rect.npz")
    np.savez(tmp_path / "labels.npz", images=np.zeros((2, 16)), labels=np.arange(3))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        load_npz(tmp_path / "labels.npz")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="unknown data"):
        load_images(tmp_path / "data.csv")


def _write_idx(path, array, magic_type=0x08):
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_images_with_labels_beside_them(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(3, 28, 28))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 2, 1]))
    data = load_images(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert data.images.shape == (3, 784) and data.shape == (28, 28)
    assert data.labels.tolist() == [7, 2, 1]
    _write_idx(tmp_path / "bad-images-idx3-ubyte", images, magic_type=0x0D)
    with pytest.raises(ValueError, match="bad magic number"):
        load_idx(tmp_path / "bad-images-idx3-ubyte")
    with pytest.raises(ValueError, match="has 1 dimensions, expected 3"):
        load_idx(tmp_path / "t10k-labels-idx1-ubyte.gz")
