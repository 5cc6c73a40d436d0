"""Input images from files: what `simulate --input` and the procedures' object specs accept."""
from __future__ import annotations

from pathlib import Path

from .errors import UsageError


def load_image(path: str | Path):
    """A 2-D image in [0, 1] from .npy (any float/int array) or .png (converted to grey)."""
    import numpy as np
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--input {path}: no such file")
    if path.suffix.lower() == ".npy":
        image = np.load(path, allow_pickle=False)
    elif path.suffix.lower() == ".png":
        import matplotlib.image
        image = matplotlib.image.imread(path)
        if image.ndim == 3:
            image = image[..., :3].mean(-1)
    else:
        raise UsageError(f"--input {path}: expected a .npy or .png image")
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 2:
        raise UsageError(f"--input {path}: expected a 2-D image, got shape {image.shape}")
    if not np.isfinite(image).all() or image.min() < 0:
        raise UsageError(f"--input {path}: pixel values must be finite and >= 0")
    peak = image.max()
    if peak > 1.0:
        image = image / (255.0 if peak <= 255 else peak)
    return image
