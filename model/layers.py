"""A diffractive layer: a printable height map in a lossy material, with a differentiable pose.

Transmission of a pillar of height h in a material of index n and extinction κ at wavelength λ:
``t = exp(−2π κ h / λ) · exp(i 2π (n − 1) h / λ)`` (relative to the same path in air; the base plate
adds a constant factor that no detector ratio sees, so it is left out).

The pose (lateral shift dx, dy, rotation about the optical axis, axial offset dz) is a set of
parameters that stay frozen for training and are freed by the calibration. Shifts and rotations
resample the printed height map (bilinear, so sub-pixel and differentiable); dz is consumed by the
propagators on either side of the layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

POSE_NAMES = ("dx_m", "dy_m", "dz_m", "rotation_rad")


@dataclass(frozen=True)
class Material:
    refractive_index: float
    extinction_coefficient: float
    max_height_m: float
    height_step_m: float = 0.0
    phase_only: bool = False

    def transmission(self, height_m: torch.Tensor, wavelength_m: float,
                     index_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Complex transmission of ``height_m``; ``index_scale`` scales (n − 1) (calibration global)."""
        phase = (2 * math.pi / wavelength_m) * (self.refractive_index - 1.0) * index_scale * height_m
        if self.phase_only:
            return torch.polar(torch.ones_like(height_m), phase)
        amplitude = torch.exp((-2 * math.pi * self.extinction_coefficient / wavelength_m) * height_m)
        return torch.polar(amplitude, phase)


class _RoundToStep(torch.autograd.Function):
    """Quantize to the printer's z-step; the gradient passes straight through (Bengio 2013)."""

    @staticmethod
    def forward(ctx, height, step, top_steps):
        return torch.round(height / step).clamp(max=top_steps) * step

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def quantize_heights(height_m: torch.Tensor, step_m: float, max_height_m: float = math.inf) -> torch.Tensor:
    """Heights rounded to multiples of ``step_m``, never above the highest multiple <= ``max_height_m``."""
    if step_m <= 0:
        return height_m
    top = math.floor(max_height_m / step_m + 1e-9) if math.isfinite(max_height_m) else math.inf
    return _RoundToStep.apply(height_m, step_m, top)


def resample_pose(image: torch.Tensor, pitch_m: float, dx_m, dy_m, rotation_rad,
                  mode: str = "bilinear", fill: float = 0.0) -> torch.Tensor:
    """The map ``image`` (…, n, n) displaced by (dx, dy) and rotated by ``rotation_rad`` about the grid
    centre.

    Coordinates: column index → x, row index → y (DESIGN.md: row = y, column = x); a positive ``dx_m``
    moves content towards larger column indices, a positive angle turns +x towards +y. Samples that
    come from outside the map get ``fill``. Differentiable in the pose arguments (tensors or floats).
    """
    n_y, n_x = image.shape[-2:]
    lead = image.shape[:-2]
    flat = image.reshape(1, -1, n_y, n_x) - fill
    dev, dt = image.device, image.dtype
    angle = torch.as_tensor(rotation_rad, dtype=dt, device=dev)
    shift_x = torch.as_tensor(dx_m, dtype=dt, device=dev) * (2.0 / (n_x * pitch_m))
    shift_y = torch.as_tensor(dy_m, dtype=dt, device=dev) * (2.0 / (n_y * pitch_m))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output point p samples the input at R(−θ)(p − d): an inverse map, as affine_grid wants.
    inv = torch.stack([torch.stack([cos, sin]), torch.stack([-sin, cos])])
    offset = -(inv @ torch.stack([shift_x, shift_y]))
    theta = torch.cat([inv, offset[:, None]], dim=1)[None]
    grid = F.affine_grid(theta, [1, flat.shape[1], n_y, n_x], align_corners=False)
    out = F.grid_sample(flat, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.reshape(*lead, n_y, n_x) + fill


class DiffractiveLayer(nn.Module):
    """One printed plate: ``neurons``² pillars of learnable height in [0, max_height]."""

    def __init__(self, neurons: int, material: Material, init_std: float = 0.5):
        super().__init__()
        self.neurons = neurons
        self.material = material
        # Heights through a sigmoid keep every pillar printable without clipping gradients.
        self.height_logits = nn.Parameter(init_std * torch.randn(neurons, neurons))
        self.quantization_aware = False
        for name in POSE_NAMES:
            self.register_parameter(name, nn.Parameter(torch.zeros(()), requires_grad=False))

    def heights_m(self, quantize: bool = True) -> torch.Tensor:
        """Pillar heights; quantized to the printer's z-step as printed, except while training without
        ``quantization_aware`` (then the continuous heights learn and only evaluation sees the steps)."""
        h = self.material.max_height_m * torch.sigmoid(self.height_logits)
        if quantize and (self.quantization_aware or not self.training):
            h = quantize_heights(h, self.material.height_step_m, self.material.max_height_m)
        return h

    def set_heights_m(self, height_m: torch.Tensor) -> None:
        """Set the design from a height map (e.g. an exported plate); heights are clipped inside (0, max)."""
        frac = (height_m / self.material.max_height_m).clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            self.height_logits.copy_(torch.logit(frac))

    def pose_is_zero(self) -> bool:
        return all(not getattr(self, n).requires_grad and float(getattr(self, n)) == 0.0
                   for n in ("dx_m", "dy_m", "rotation_rad"))

    def transmission(self, wavelength_m: float, pitch_m: float, oversample: int = 1,
                     index_scale: torch.Tensor | float = 1.0, jitter: dict | None = None) -> torch.Tensor:
        """Complex transmission on the field grid (neurons·oversample per side).

        ``oversample`` > 1 renders each pillar as an oversample² block (printed pixels are square), then
        applies the pose on that finer grid. ``jitter`` adds random pose offsets (vaccination).
        """
        h = self.heights_m()
        if oversample > 1:
            h = h.repeat_interleave(oversample, 0).repeat_interleave(oversample, 1)
        dx, dy, rot = self.dx_m, self.dy_m, self.rotation_rad
        if jitter is not None:
            dx, dy, rot = dx + jitter["dx_m"], dy + jitter["dy_m"], rot + jitter["rotation_rad"]
        if jitter is not None or not self.pose_is_zero():
            # Outside the printed area the plate is gone: height 0 (free space up to a constant).
            h = resample_pose(h, pitch_m / oversample, dx, dy, rot)
        return self.material.transmission(h, wavelength_m, index_scale)
