"""What the virtual bench's detector sees: the printed network *as built*.

The design checkpoint is rendered the way the plates really are, not the way the twin models them:
on a field grid ``oversample``× finer than the neurons (each pillar a block of fine pixels), with the
hidden per-layer shifts/rotations applied by resampling that fine height map, hidden axial offsets,
the material's index error, the printer's height steps, a Gaussian source with its own waist, tilt and
offset, and the detector's finite aperture. A calibration working on the coarse twin therefore cannot
win by matching this discretization.

Nothing here knows about instruments: ``lab.virtual.bench`` asks for the optical power at a stage
position for the current object, frequency and source power.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.config import SPEED_OF_LIGHT_M_S
from model.detector import aperture_power, sample_bilinear
from model.network import D2NN


@dataclass(frozen=True)
class LayerError:
    dx_m: float = 0.0
    dy_m: float = 0.0
    dz_m: float = 0.0
    rotation_rad: float = 0.0


@dataclass(frozen=True)
class AsBuilt:
    """The hidden truth of a virtual bench (SI units)."""
    layers: tuple[LayerError, ...] = ()
    index_scale: float = 1.0            # printed (n − 1) / design (n − 1)
    height_step_m: float = 0.0          # printer z-step (0 = as designed)
    object_dx_m: float = 0.0
    object_dy_m: float = 0.0
    detector_dz_m: float = 0.0
    source_waist_m: float | None = None  # None = plane wave
    source_tilt_x_rad: float = 0.0
    source_tilt_y_rad: float = 0.0
    source_dx_m: float = 0.0
    source_dy_m: float = 0.0
    aperture_m: float = 0.0             # side of the detector's square aperture (0 = point detector)
    oversample: int = 2

    @staticmethod
    def random(n_layers: int, seed: int, lateral_m: float, axial_m: float, rotation_rad: float,
               **others) -> "AsBuilt":
        """Per-layer errors drawn uniformly in ±magnitude (seeded)."""
        rng = np.random.default_rng(seed)
        u = lambda mag: float(rng.uniform(-mag, mag))
        layers = tuple(LayerError(u(lateral_m), u(lateral_m), u(axial_m), u(rotation_rad))
                       for _ in range(n_layers))
        return AsBuilt(layers=layers, **others)


class AsBuiltOptics:
    """Output-plane power maps of the as-built network, cached per (object, frequency)."""

    def __init__(self, design_checkpoint: str | Path, truth: AsBuilt, source_power_w: float = 1e-6):
        self.design_checkpoint = Path(design_checkpoint)
        self.truth = truth
        self.source_power_w = source_power_w  # THz power through the object plane at nominal RF power
        self._nets: dict[float, D2NN] = {}
        self._maps: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    # ---- building the as-built network -----------------------------------------------------------
    def network(self, freq_hz: float) -> D2NN:
        key = round(freq_hz, 0)
        if key not in self._nets:
            self._nets[key] = self._build(freq_hz)
        return self._nets[key]

    def _build(self, freq_hz: float) -> D2NN:
        t = self.truth
        design, _ = load_checkpoint(self.design_checkpoint)
        material = replace(design.material, height_step_m=t.height_step_m or design.material.height_step_m)
        net, _ = load_checkpoint(self.design_checkpoint, oversample=t.oversample,
                                 wavelength_m=SPEED_OF_LIGHT_M_S / freq_hz, material=material)
        if t.layers and len(t.layers) != len(net.layers):
            raise ValueError(f"as-built errors for {len(t.layers)} layers, the network has {len(net.layers)}")
        with torch.no_grad():
            for layer, err in zip(net.layers, t.layers):
                for name in ("dx_m", "dy_m", "dz_m", "rotation_rad"):
                    getattr(layer, name).fill_(getattr(err, name))
            net.index_scale.fill_(t.index_scale)
            net.object_dx_m.fill_(t.object_dx_m)
            net.object_dy_m.fill_(t.object_dy_m)
            net.detector_dz_m.fill_(t.detector_dz_m)
        net.set_illumination(self._illumination(net))
        net.eval()
        return net

    def _illumination(self, net: D2NN) -> torch.Tensor:
        t = self.truth
        c = net.coords_m()
        y, x = c[:, None], c[None, :]
        amplitude = torch.ones(net.n, net.n, dtype=torch.float64)
        if t.source_waist_m is not None:
            amplitude = torch.exp(-((x - t.source_dx_m) ** 2 + (y - t.source_dy_m) ** 2) / t.source_waist_m ** 2)
        k = 2 * math.pi / net.wavelength_m
        phase = k * (math.sin(t.source_tilt_x_rad) * x + math.sin(t.source_tilt_y_rad) * y)
        return torch.polar(amplitude, phase).to(torch.complex64)

    # ---- maps ----------------------------------------------------------------------------------
    def power_map(self, object_id: str, image: np.ndarray | None, freq_hz: float) -> tuple[np.ndarray, np.ndarray]:
        """(coords_m, map_w): power (W) a detector centred on each grid point collects, with the
        source at nominal power. ``image`` None = no object in the beam (the bare beam)."""
        key = (object_id, round(freq_hz, 0))
        if key not in self._maps:
            self._maps[key] = self._compute_map(image, freq_hz)
        return self._maps[key]

    @torch.no_grad()
    def _compute_map(self, image: np.ndarray | None, freq_hz: float) -> tuple[np.ndarray, np.ndarray]:
        net = self.network(freq_hz)
        if image is None:  # a fully open object plane: the source's own beam through the layers
            img = torch.ones(1, 28, 28)
        else:
            img = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
        intensity = net.output_intensity(img)[0].double()  # |U|² per fine pixel, plane-wave units
        pixel_area = net.pitch_m ** 2
        # Normalise so that the unit-amplitude plane wave over the full input plane carries source_power_w.
        plane_area = (net.n * net.pitch_m) ** 2
        power_density = intensity * (self.source_power_w / plane_area)  # W/m²
        power = power_density * pixel_area
        # a point detector (aperture 0) is modelled as collecting one fine pixel's power
        collected = aperture_power(power, net.pitch_m, self.truth.aperture_m) if self.truth.aperture_m > 0 else power
        return net.coords_m().numpy(), collected.numpy()

    def detector_power_w(self, x_m: float, y_m: float, object_id: str, image: np.ndarray | None,
                         freq_hz: float, power_factor: float = 1.0) -> float:
        """Power on the detector at optical-axis coordinates (x, y); 0 outside the computed window."""
        coords, pmap = self.power_map(object_id, image, freq_hz)
        return power_factor * _bilinear(pmap, coords, x_m, y_m)


def _bilinear(values: np.ndarray, coords: np.ndarray, x: float, y: float) -> float:
    """One bilinear sample; 0 outside the computed window (no light reaches there in the model)."""
    return float(np.nan_to_num(sample_bilinear(values, coords, x, y), nan=0.0)[0])
