"""Network configuration (NET.yaml): geometry, material, input, detector, training.

Human units in the file (mm, GHz, degrees), each key saying its unit; the ``*_m``/``*_hz`` properties
convert once, here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .schema import ConfigError, load_section, read_yaml, spec, to_dict

SPEED_OF_LIGHT_M_S = 299_792_458.0


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    neurons: int = spec(positive=True, help="neurons per side of every layer")
    pitch_mm: float = spec(positive=True, help="neuron pitch")


@dataclass(frozen=True, kw_only=True)
class LayersConfig:
    count: int = spec(positive=True)
    spacing_mm: float = spec(positive=True, help="distance between consecutive layers")
    input_distance_mm: float | None = spec(None, positive=True, help="object → layer 1 (default: spacing)")
    output_distance_mm: float | None = spec(None, positive=True, help="last layer → output (default: spacing)")
    distances_mm: list[float] | None = spec(None, help="all count + 1 distances (object → L1, …, LN → output); "
                                                  "overrides the three keys above")

    def __post_init__(self):
        if self.distances_mm is not None:
            if len(self.distances_mm) != self.count + 1:
                raise ConfigError(f"layers.distances_mm needs count + 1 = {self.count + 1} values "
                                  f"(got {len(self.distances_mm)})")
            if any(d <= 0 for d in self.distances_mm):
                raise ConfigError(f"layers.distances_mm must all be > 0 (got {self.distances_mm})")


@dataclass(frozen=True, kw_only=True)
class MaterialConfig:
    name: str = spec("VeroBlackPlus RGD875")
    refractive_index: float = spec(1.7227, positive=True)
    extinction_coefficient: float = spec(0.031, nonneg=True)
    max_height_mm: float | None = spec(None, positive=True, help="default: the height of a 2π phase step")
    height_step_mm: float = spec(0.0, nonneg=True, help="printer z-step; 0 = continuous heights")
    phase_only: bool = spec(False, help="ignore absorption (idealisation)")


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    object_size_mm: float = spec(positive=True, help="side of the input object on the input plane")
    source_waist_mm: float | None = spec(None, positive=True, help="Gaussian illumination waist; none = plane wave")


@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    region_size_mm: float = spec(positive=True)
    region_spacing_mm: float | None = spec(None, positive=True, help="centre-to-centre; default 2× size")
    layout: str = spec("lin2018", choices=("lin2018", "grid"))
    differential: bool = spec(False, help="10 pairs of regions, score = (I+ − I−)/(I+ + I−)")


@dataclass(frozen=True, kw_only=True)
class VaccinationConfig:
    """Random pose errors drawn each batch (Mengu et al. 2020); uniform in ±magnitude."""
    dx_mm: float = spec(0.0, nonneg=True)
    dy_mm: float = spec(0.0, nonneg=True)
    dz_mm: float = spec(0.0, nonneg=True)
    rotation_deg: float = spec(0.0, nonneg=True)

    @property
    def enabled(self) -> bool:
        return any(v > 0 for v in (self.dx_mm, self.dy_mm, self.dz_mm, self.rotation_deg))


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    dataset: str = spec("mnist", choices=("mnist", "fashion-mnist"))
    epochs: int = spec(5, positive=True)
    batch_size: int = spec(32, positive=True)
    learning_rate: float = spec(0.01, positive=True)
    temperature: float = spec(10.0, positive=True, help="softmax temperature on normalised energies")
    learn_temperature: bool = spec(True)
    validation_fraction: float = spec(0.1, range=(0.0, 0.5))
    max_train_samples: int | None = spec(None, positive=True, help="cap on training samples (for quick runs)")
    quantization_aware: bool = spec(False, help="train through the printer's height quantization")
    vaccination: VaccinationConfig = spec(default_factory=VaccinationConfig)


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    name: str = spec()
    task: str = spec("classification", choices=("classification", "imaging"))
    freq_ghz: float = spec(400.0, positive=True)
    grid: GridConfig = spec()
    layers: LayersConfig = spec()
    material: MaterialConfig = spec(default_factory=MaterialConfig)
    input: InputConfig = spec()
    detector: DetectorConfig | None = spec(None)
    training: TrainingConfig = spec(default_factory=TrainingConfig)

    def __post_init__(self):
        if self.task == "classification" and self.detector is None:
            raise ConfigError("detector: a classification network needs a 'detector' section")
        plane_mm = self.grid.neurons * self.grid.pitch_mm
        if self.input.object_size_mm > plane_mm:
            raise ConfigError(f"input.object_size_mm ({self.input.object_size_mm}) exceeds the layer size "
                              f"({plane_mm:g} mm = grid.neurons × grid.pitch_mm)")
        if self.material.max_height_mm is not None and self.material.height_step_mm > self.material.max_height_mm:
            raise ConfigError("material.height_step_mm must not exceed material.max_height_mm")

    # ---- SI views -------------------------------------------------------------------------------
    @property
    def freq_hz(self) -> float:
        return self.freq_ghz * 1e9

    @property
    def wavelength_m(self) -> float:
        return SPEED_OF_LIGHT_M_S / self.freq_hz

    @property
    def pitch_m(self) -> float:
        return self.grid.pitch_mm * 1e-3

    @property
    def distances_m(self) -> list[float]:
        """Propagation distances: object→L1, L1→L2, …, LN→output (N+1 values)."""
        if self.layers.distances_mm is not None:
            return [d * 1e-3 for d in self.layers.distances_mm]
        spacing = self.layers.spacing_mm
        first = self.layers.input_distance_mm or spacing
        last = self.layers.output_distance_mm or spacing
        return [d * 1e-3 for d in [first] + [spacing] * (self.layers.count - 1) + [last]]

    @property
    def max_height_m(self) -> float:
        if self.material.max_height_mm is not None:
            return self.material.max_height_mm * 1e-3
        return self.wavelength_m / (self.material.refractive_index - 1.0)

    def with_distances_mm(self, distances_mm: list[float]) -> "NetworkConfig":
        """The same network with len(distances_mm) − 1 layers at the given distances."""
        return replace(self, layers=replace(self.layers, count=len(distances_mm) - 1,
                                            distances_mm=list(distances_mm)))

    def to_dict(self) -> dict:
        return to_dict(self)


def network_config_from_dict(data: dict, source: str = "<config>") -> NetworkConfig:
    return load_section(NetworkConfig, data, source)


def load_network_config(path: str | Path) -> NetworkConfig:
    return network_config_from_dict(read_yaml(path), str(path))
