"""Image data sets: the embedded digits, and users' ``.npz`` / MNIST IDX files.

Every loader returns an :class:`ImageData` with ``images`` of shape ``(N, H * W)``, float32 in
[0, 1], and integer ``labels`` of shape ``(N,)`` (or ``None``). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass
class ImageData:
    """Flattened images in [0, 1] with optional labels; ``shape`` is ``(H, W)``."""

    images: torch.Tensor
    labels: torch.Tensor | None
    shape: tuple[int, int]
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def binarized(self, threshold: float = 0.5) -> ImageData:
        """The same images thresholded to {0, 1} (for Bernoulli likelihoods)."""
        images = (self.images > threshold).to(self.images.dtype)
        return ImageData(images, self.labels, self.shape, f"{self.name} (binarized)")


def load_digits(split: str = "train") -> ImageData:
    """scikit-learn's 8x8 digits (1797 images, intensities 0..16 scaled to [0, 1]).

    A fixed stratified split: 20% test, seed 0; ``split`` is ``"train"``, ``"test"`` or
    ``"all"``.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ValueError(f"load_digits: split must be 'train', 'test' or 'all', got {split!r}")
    bunch = sk_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    if split != "all":
        x_train, x_test, y_train, y_test = train_test_split(
            x,
            y,
            test_size=DIGITS_TEST_FRACTION,
            random_state=DIGITS_SPLIT_SEED,
            stratify=y,
        )
        x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return ImageData(torch.from_numpy(x), torch.from_numpy(y), (8, 8), f"digits/{split}")


IMAGE_KEYS = ("images", "x", "X", "data")
LABEL_KEYS = ("labels", "y", "targets")


def load_npz(path: str | Path, key: str | None = None, label_key: str | None = None) -> ImageData:
    """Images from an ``.npz`` file: array ``key`` (default: the first of ``images``, ``x``,
    ``X``, ``data`` present, else the only array) of shape ``(N, H, W)`` or ``(N, H * W)``
    (square), values in [0, 1] or 0..255 integers; labels from ``label_key`` (default: the first
    of ``labels``, ``y``, ``targets`` present), if any.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_npz: no file at {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"load_npz: {path} is not a readable .npz archive of numeric arrays "
            f"({type(err).__name__}); save it with numpy.savez(path, images=..., labels=...)"
        ) from None
    with archive as f:
        names = list(f.keys())
        label_key = label_key or next((k for k in LABEL_KEYS if k in names), None)
        key = key or _image_key(path, names, label_key)
        wanted = (("images", "--data-key", key), ("labels", "--label-key", label_key))
        for what, flag, name in wanted:
            if name is not None and name not in names:
                raise ValueError(
                    f"load_npz: {path} has no array {name!r} for the {what}; it holds {names} "
                    f"(choose with {flag})"
                )
        images = f[key]
        labels = f[label_key] if label_key is not None else None
    return _checked(images, labels, str(path))


def _image_key(path: Path, names: list[str], label_key: str | None) -> str:
    found = next((k for k in IMAGE_KEYS if k in names), None)
    if found is not None:
        return found
    others = [n for n in names if n != label_key]
    if len(others) == 1:
        return others[0]
    raise ValueError(
        f"load_npz: {path} holds arrays {names} and none is named {' / '.join(IMAGE_KEYS)}; "
        "say which holds the images with key=... (--data-key on the command line)"
    )


def load_idx(path: str | Path, labels_path: str | Path | None = None) -> ImageData:
    """MNIST-format IDX images (``*-images-idx3-ubyte``, optionally ``.gz``), and labels from
    the matching ``*-labels-idx1-ubyte[.gz]`` file when it exists beside them.
    """
    path = Path(path)
    images = _read_idx(path, expected_dims=3)
    if labels_path is None:
        guess = Path(str(path).replace("images-idx3", "labels-idx1"))
        labels_path = guess if guess != path and guess.is_file() else None
    labels = _read_idx(Path(labels_path), expected_dims=1) if labels_path else None
    return _checked(images, labels, str(path))


def load_images(
    source: str | Path,
    split: str = "train",
    key: str | None = None,
    label_key: str | None = None,
) -> ImageData:
    """``"digits"`` (the embedded set, ``split`` applies), or a path to ``.npz`` (arrays
    ``key``/``label_key``, see :func:`load_npz`) or IDX data."""
    if str(source) == "digits":
        return load_digits(split)
    path = Path(source)
    if path.suffix == ".npz":
        return load_npz(path, key, label_key)
    if "idx3" in path.name:
        return load_idx(path)
    raise ValueError(
        f"unknown data {str(source)!r}: use 'digits', an .npz file, or an MNIST IDX file "
        "(*-images-idx3-ubyte[.gz])"
    )


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"load_idx: no file at {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"load_idx: {path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    if ndim != expected_dims:
        raise ValueError(f"load_idx: {path} has {ndim} dimensions, expected {expected_dims}")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(
            f"load_idx: {path} is truncated: header says {dims}, has {body.size} bytes"
        )
    return body.reshape(dims)


def _checked(images: np.ndarray, labels: np.ndarray | None, name: str) -> ImageData:
    """Check shape and range; scale 0..255 integers to [0, 1]; flatten to (N, H * W)."""
    images = np.asarray(images)
    if images.ndim == 2:
        side = round(images.shape[1] ** 0.5)
        if side * side != images.shape[1]:
            raise ValueError(
                f"{name}: images of shape {images.shape} are not square; store them as (N, H, W)"
            )
        shape = (side, side)
    elif images.ndim == 3:
        shape = images.shape[1:]
    else:
        raise ValueError(
            f"{name}: images must have shape (N, H, W) or (N, H*W), got {images.shape}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name}: holds no images")
    if np.issubdtype(images.dtype, np.integer):
        if images.min() < 0 or images.max() > 255:
            raise ValueError(f"{name}: integer images must lie in 0..255")
        images = images.astype(np.float32) / 255.0
    images = images.astype(np.float32).reshape(images.shape[0], -1)
    if not np.isfinite(images).all():
        raise ValueError(f"{name}: images contain NaN or inf")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(
            f"{name}: float images must lie in [0, 1], got [{images.min():.3g}, {images.max():.3g}]"
        )
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
        labels = torch.from_numpy(labels)
    return ImageData(torch.from_numpy(images), labels, tuple(shape), name)
