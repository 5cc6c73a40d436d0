"""Detector regions on the output plane and the energy readout.

Regions are squares given in metres on the output plane; each is rendered as separable per-axis
coverage weights (fraction of every pixel's width inside the square), so the same regions read the
same energy on a coarse twin grid and on the virtual bench's finer one.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

LIN2018_ROWS = (3, 4, 3)


def region_centres_m(layout: str, n_classes: int, spacing_m: float, differential: bool) -> list[tuple[float, float]]:
    """Centres (x, y) of the regions; for a differential detector, class k owns regions 2k (+), 2k+1 (−)."""
    n_regions = 2 * n_classes if differential else n_classes
    if layout == "lin2018" and not differential and n_classes == 10:
        rows = LIN2018_ROWS
    else:  # a near-square grid, row-major
        cols = int(torch.ceil(torch.sqrt(torch.tensor(float(n_regions)))).item())
        if differential and cols % 2:
            cols += 1  # keep each (+, −) pair side by side on one row
        full, rest = divmod(n_regions, cols)
        rows = (cols,) * full + ((rest,) if rest else ())
    centres = []
    for r, count in enumerate(rows):
        y = (r - (len(rows) - 1) / 2) * spacing_m
        for c in range(count):
            centres.append(((c - (count - 1) / 2) * spacing_m, y))
    return centres


def _coverage(n: int, pitch_m: float, lo_m: float, hi_m: float) -> torch.Tensor:
    """Fraction of each pixel [x − p/2, x + p/2] (pixel centres symmetric about 0) inside [lo, hi]."""
    centres = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * pitch_m
    left, right = centres - pitch_m / 2, centres + pitch_m / 2
    overlap = (torch.minimum(right, torch.tensor(hi_m)) - torch.maximum(left, torch.tensor(lo_m))).clamp(min=0)
    return (overlap / pitch_m).float()


class DetectorRegions(nn.Module):
    def __init__(self, n: int, pitch_m: float, size_m: float, centres_m: list[tuple[float, float]],
                 differential: bool = False):
        super().__init__()
        self.size_m, self.centres_m, self.differential = size_m, centres_m, differential
        half = size_m / 2
        wx = torch.stack([_coverage(n, pitch_m, cx - half, cx + half) for cx, _ in centres_m])
        wy = torch.stack([_coverage(n, pitch_m, cy - half, cy + half) for _, cy in centres_m])
        self.register_buffer("weight_x", wx, persistent=False)
        self.register_buffer("weight_y", wy, persistent=False)

    @property
    def n_classes(self) -> int:
        return len(self.centres_m) // (2 if self.differential else 1)

    def energies(self, intensity: torch.Tensor) -> torch.Tensor:
        """Energy per region (…, R) from intensity (…, n, n), in intensity·pixel units."""
        return torch.einsum("...yx,ry,rx->...r", intensity, self.weight_y, self.weight_x)

    def scores(self, energies: torch.Tensor) -> torch.Tensor:
        """Per-class scores: normalised energies, or (I+ − I−)/(I+ + I−) for a differential detector."""
        if self.differential:
            pos, neg = energies[..., 0::2], energies[..., 1::2]
            return (pos - neg) / (pos + neg).clamp(min=1e-20)
        return energies / energies.sum(-1, keepdim=True).clamp(min=1e-20)


def aperture_kernel(aperture_m: float, pitch_m: float) -> torch.Tensor | None:
    """(1, 1, k, k) box filter of a square detector aperture of side ``aperture_m`` on a grid of
    ``pitch_m``: each neighbour weighted by the fraction of its width inside the aperture, so that a
    uniform density ρ (per pixel: ρ·pitch²) reads ρ·aperture² for any aperture, smaller or larger than a
    pixel. None for a point detector (``aperture_m`` <= 0)."""
    if aperture_m <= 0:
        return None
    half = aperture_m / pitch_m / 2
    r = int(math.ceil(half - 0.5))
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    w = (torch.minimum(offsets + 0.5, torch.tensor(half)) - torch.maximum(offsets - 0.5, torch.tensor(-half))).clamp(min=0)
    return (w[:, None] * w[None, :])[None, None]


def aperture_power(power_per_pixel: torch.Tensor, pitch_m: float, aperture_m: float,
                   kernel: torch.Tensor | None = None) -> torch.Tensor:
    """What a detector centred on every pixel reads from a map of power per pixel (…, n, n): the power
    through its aperture (W), or for a point detector the power density (W/m²). ``kernel`` may be a
    precomputed ``aperture_kernel`` (the hot path of calibration)."""
    kernel = aperture_kernel(aperture_m, pitch_m) if kernel is None else kernel
    if kernel is None:
        return power_per_pixel / pitch_m ** 2
    lead = power_per_pixel.shape[:-2]
    flat = power_per_pixel.reshape(-1, 1, *power_per_pixel.shape[-2:])
    out = torch.nn.functional.conv2d(flat, kernel.to(flat.dtype), padding=kernel.shape[-1] // 2)
    return out.reshape(*lead, *out.shape[-2:])


def sample_bilinear(values: np.ndarray, coords_m: np.ndarray, x_m, y_m) -> np.ndarray:
    """``values[row = y, column = x]`` on pixel centres ``coords_m`` (same on both axes), bilinearly
    interpolated at (x_m, y_m); NaN outside the grid's first..last pixel centre."""
    coords = np.asarray(coords_m, dtype=np.float64)
    x, y = np.atleast_1d(np.asarray(x_m, dtype=np.float64)), np.atleast_1d(np.asarray(y_m, dtype=np.float64))
    pitch, n = coords[1] - coords[0], len(coords)
    fx, fy = (x - coords[0]) / pitch, (y - coords[0]) / pitch
    eps = 1e-9
    inside = (fx >= -eps) & (fx <= n - 1 + eps) & (fy >= -eps) & (fy <= n - 1 + eps)
    fx, fy = np.clip(fx, 0, n - 1), np.clip(fy, 0, n - 1)
    ix, iy = np.minimum(fx.astype(int), n - 2), np.minimum(fy.astype(int), n - 2)
    tx, ty = fx - ix, fy - iy
    v = values
    out = ((1 - ty) * ((1 - tx) * v[iy, ix] + tx * v[iy, ix + 1])
           + ty * ((1 - tx) * v[iy + 1, ix] + tx * v[iy + 1, ix + 1]))
    return np.where(inside, out, np.nan)
