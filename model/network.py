"""The D2NN: input object → N diffractive layers → output plane → detector regions.

The field grid is the neuron grid, or ``oversample``× finer (the virtual bench renders the printed
network at least 2× finer than the twin so a calibration cannot win by matching its discretization).
Global as-built parameters live here too (frozen unless a calibration frees them): input-object
offset, output-plane axial offset and the material's (n − 1) scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import NetworkConfig
from .detector import DetectorRegions, region_centres_m
from .layers import DiffractiveLayer, Material, resample_pose
from .propagation import AngularSpectrumPropagator

GLOBAL_NAMES = ("object_dx_m", "object_dy_m", "detector_dz_m", "index_scale")


def material_from_config(cfg: NetworkConfig) -> Material:
    m = cfg.material
    return Material(m.refractive_index, m.extinction_coefficient, cfg.max_height_m,
                    m.height_step_mm * 1e-3, m.phase_only)


class D2NN(nn.Module):
    def __init__(self, cfg: NetworkConfig, oversample: int = 1, wavelength_m: float | None = None,
                 material: Material | None = None):
        super().__init__()
        self.cfg = cfg
        self.oversample = oversample
        self.wavelength_m = wavelength_m or cfg.wavelength_m
        self.n = cfg.grid.neurons * oversample
        self.pitch_m = cfg.pitch_m / oversample
        self.material = material or material_from_config(cfg)
        self.layers = nn.ModuleList(DiffractiveLayer(cfg.grid.neurons, self.material)
                                    for _ in range(cfg.layers.count))
        for layer in self.layers:
            layer.quantization_aware = cfg.training.quantization_aware
        self.propagators = nn.ModuleList(self._propagator(d) for d in cfg.distances_m)
        for name in GLOBAL_NAMES:
            init = 1.0 if name == "index_scale" else 0.0
            self.register_parameter(name, nn.Parameter(torch.tensor(init), requires_grad=False))
        self.detector = None
        if cfg.detector is not None:
            d = cfg.detector
            size_m = d.region_size_mm * 1e-3
            spacing_m = (d.region_spacing_mm * 1e-3) if d.region_spacing_mm else 2 * size_m
            centres = region_centres_m(d.layout, 10, spacing_m, d.differential)
            self.detector = DetectorRegions(self.n, self.pitch_m, size_m, centres, d.differential)
        self.log_temperature = nn.Parameter(torch.tensor(cfg.training.temperature).log(),
                                            requires_grad=cfg.training.learn_temperature)
        self._illumination = self._make_illumination()

    # ---- construction helpers ------------------------------------------------------------------
    def _propagator(self, distance_m: float) -> AngularSpectrumPropagator:
        # Equal spacings share one precomputed transfer function.
        key = (self.n, self.pitch_m, self.wavelength_m, distance_m)
        cache = self.__dict__.setdefault("_prop_cache", {})
        if key not in cache:
            cache[key] = AngularSpectrumPropagator(self.n, self.pitch_m, self.wavelength_m, distance_m)
        return cache[key]

    def _make_illumination(self) -> torch.Tensor | None:
        waist_mm = self.cfg.input.source_waist_mm
        if waist_mm is None:
            return None
        c = (torch.arange(self.n) - (self.n - 1) / 2) * self.pitch_m
        r2 = c[:, None] ** 2 + c[None, :] ** 2
        return torch.exp(-r2 / (waist_mm * 1e-3) ** 2)

    def set_illumination(self, field: torch.Tensor | None) -> None:
        """Complex (or real) illumination on the input plane, (n, n); None = unit plane wave."""
        if field is not None and tuple(field.shape) != (self.n, self.n):
            raise ValueError(f"illumination must be {self.n}×{self.n}, got {tuple(field.shape)}")
        self._illumination = field

    @property
    def object_pixels(self) -> int:
        return max(1, round(self.cfg.input.object_size_mm * 1e-3 / self.pitch_m))

    def coords_m(self) -> torch.Tensor:
        """Pixel-centre coordinates of the field grid along one axis (symmetric about the axis)."""
        return (torch.arange(self.n, dtype=torch.float64) - (self.n - 1) / 2) * self.pitch_m

    # ---- forward model -------------------------------------------------------------------------
    def input_field(self, images: torch.Tensor) -> torch.Tensor:
        """Amplitude masks (B, n, n) from images (B, h, w) in [0, 1], resized to the object's physical size."""
        k = self.object_pixels
        obj = F.interpolate(images[:, None].float(), size=(k, k), mode="bilinear", align_corners=False,
                            antialias=k < images.shape[-1])[:, 0].clamp(0, 1)
        lo = (self.n - k) // 2
        field = F.pad(obj, (lo, self.n - k - lo, lo, self.n - k - lo))
        if self.object_dx_m.requires_grad or self.object_dy_m.requires_grad or \
                float(self.object_dx_m) or float(self.object_dy_m):
            field = resample_pose(field, self.pitch_m, self.object_dx_m, self.object_dy_m, 0.0)
        if self._illumination is not None:
            field = field * self._illumination.to(field.device)
        return field.to(torch.complex64)

    def _axial_offsets(self) -> list[torch.Tensor | None]:
        """dz added to each propagation: (dz of the plane after) − (dz of the plane before)."""
        planes = [None] + [layer.dz_m for layer in self.layers] + [self.detector_dz_m]
        used = [p is not None and (p.requires_grad or float(p) != 0.0) for p in planes]
        offsets = []
        for before, after, u0, u1 in zip(planes[:-1], planes[1:], used[:-1], used[1:]):
            if not (u0 or u1):
                offsets.append(None)
            else:
                offsets.append((after if u1 else 0.0) - (before if u0 else 0.0))
        return offsets

    def output_field(self, images: torch.Tensor, jitter: list[dict] | None = None) -> torch.Tensor:
        field = self.input_field(images)
        offsets = self._axial_offsets()
        if jitter is not None:
            offsets = [(o if o is not None else 0.0) + j for o, j in
                       zip(offsets, _jitter_offsets(jitter, field.device))]
        for i, layer in enumerate(self.layers):
            field = self.propagators[i](field, offsets[i])
            t = layer.transmission(self.wavelength_m, self.cfg.pitch_m, self.oversample, self.index_scale,
                                   jitter[i] if jitter is not None else None)
            field = field * t
        return self.propagators[-1](field, offsets[-1])

    def output_intensity(self, images: torch.Tensor, jitter: list[dict] | None = None) -> torch.Tensor:
        field = self.output_field(images, jitter)
        return field.real ** 2 + field.imag ** 2

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, images: torch.Tensor, jitter: list[dict] | None = None) -> torch.Tensor:
        """Class logits (B, 10): temperature × detector scores."""
        if self.detector is None:
            raise ValueError("this network has no detector (imaging task): use output_intensity()")
        energies = self.detector.energies(self.output_intensity(images, jitter))
        return self.temperature * self.detector.scores(energies)

    # ---- poses ---------------------------------------------------------------------------------
    def pose_parameters(self) -> dict[str, torch.Tensor]:
        """Every as-built parameter by name: ``layer{i}.dx_m`` … and the globals."""
        out = {f"layer{i}.{n}": getattr(layer, n) for i, layer in enumerate(self.layers)
               for n in ("dx_m", "dy_m", "dz_m", "rotation_rad")}
        out.update({n: getattr(self, n) for n in GLOBAL_NAMES})
        return out

    def design_parameters(self) -> list[nn.Parameter]:
        return [layer.height_logits for layer in self.layers]


def _jitter_offsets(jitter: list[dict], device) -> list[torch.Tensor]:
    dz = [torch.zeros((), device=device)] + [torch.as_tensor(j["dz_m"], device=device) for j in jitter] \
        + [torch.zeros((), device=device)]
    return [b - a for a, b in zip(dz[:-1], dz[1:])]


def draw_jitter(n_layers: int, vaccination, generator: torch.Generator) -> list[dict]:
    """One random pose error per layer, uniform in ±magnitude (vaccination, Mengu et al. 2020)."""
    def u(mag):
        return float((torch.rand((), generator=generator) * 2 - 1) * mag)
    return [{"dx_m": u(vaccination.dx_mm * 1e-3), "dy_m": u(vaccination.dy_mm * 1e-3),
             "dz_m": u(vaccination.dz_mm * 1e-3),
             "rotation_rad": u(vaccination.rotation_deg * torch.pi / 180)} for _ in range(n_layers)]
