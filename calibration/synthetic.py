"""Synthetic raster scans from the virtual bench's as-built optics (benchmarks and tests only).

This is the *measurement* side: it reads the hidden truth (``AsBuiltOptics``) and returns only what a
bench would record — nominal positions and noisy powers. The fit never sees anything else.
"""
from __future__ import annotations

import numpy as np

from lab.virtual.optics import AsBuiltOptics

from .data import ObjectScan


def raster_positions(half_width_m: float, step_m: float) -> tuple[np.ndarray, np.ndarray]:
    """A square raster centred on the nominal axis, row by row (x fast)."""
    n = int(round(2 * half_width_m / step_m)) + 1
    axis = (np.arange(n) - (n - 1) / 2) * step_m
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x.ravel(), y.ravel()


def _bilinear(values: np.ndarray, coords: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    pitch = coords[1] - coords[0]
    n = len(coords)
    fx, fy = (x - coords[0]) / pitch, (y - coords[0]) / pitch
    inside = (fx >= 0) & (fx <= n - 1) & (fy >= 0) & (fy <= n - 1)
    ix = np.clip(np.floor(fx).astype(int), 0, n - 2)
    iy = np.clip(np.floor(fy).astype(int), 0, n - 2)
    tx, ty = fx - ix, fy - iy
    v = values
    out = ((1 - ty) * ((1 - tx) * v[iy, ix] + tx * v[iy, ix + 1])
           + ty * ((1 - tx) * v[iy + 1, ix] + tx * v[iy + 1, ix + 1]))
    return np.where(inside, out, 0.0)


def synthesize_scans(optics: AsBuiltOptics, images: list[np.ndarray], object_ids: list[str],
                     x_m: np.ndarray, y_m: np.ndarray, detector_offset_m: tuple[float, float] = (0.0, 0.0),
                     noise_fraction: float = 0.0, freq_hz: float = 0.4e12,
                     rng: np.random.Generator | None = None) -> list[ObjectScan]:
    """One scan per object at nominal positions (x, y). The detector really sits at (x + off_x, y + off_y)
    on the optical axis frame; ``noise_fraction`` = additive Gaussian noise rms relative to each map's peak."""
    rng = rng or np.random.default_rng(0)
    scans = []
    for image, oid in zip(images, object_ids):
        coords, pmap = optics.power_map(oid, image, freq_hz)
        p = _bilinear(pmap, coords, x_m + detector_offset_m[0], y_m + detector_offset_m[1])
        if noise_fraction > 0:
            p = p + rng.normal(0.0, noise_fraction * float(pmap.max()), size=p.shape)
        scans.append(ObjectScan(oid, np.asarray(image, np.float32), x_m.copy(), y_m.copy(), p))
    return scans
