"""BENCH.yaml: the single description of a bench, real or virtual, validated on load.

A real bench names its instruments' addresses (VISA resource strings, serial device paths). A bench
with a ``virtual:`` section is emulated: ``Bench`` starts the emulators in-process (or, with
``virtual.addresses_file``, connects to a ``d2nn-lab bench serve`` running elsewhere) and the
``virtual`` section holds the hidden as-built truth that only the emulator and reports may read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from model.schema import ConfigError, load_section, read_yaml, spec, to_dict

VIRTUAL_ADDRESS = "virtual"


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    driver: str = spec("agilent8257d", choices=("agilent8257d",))
    address: str = spec(VIRTUAL_ADDRESS, help="VISA resource, e.g. TCPIP0::192.168.1.20::5025::SOCKET")
    multiplier: int = spec(36, positive=True, help="frequency multiplication factor of the chain")
    freq_ghz: float = spec(400.0, positive=True, help="THz output frequency")
    rf_power_dbm: float = spec(10.0)
    rf_power_limits_dbm: list[float] = spec(default_factory=lambda: [0.0, 12.0],
                                            help="safe input range of the multiplier chain")
    modulation_hz: float = spec(1000.0, positive=True, help="square-wave AM the lock-in locks to")
    timeout_s: float = spec(2.0, positive=True)

    def __post_init__(self):
        lo, hi = _pair(self.rf_power_limits_dbm, "source.rf_power_limits_dbm")
        if not lo <= self.rf_power_dbm <= hi:
            raise ConfigError(f"source.rf_power_dbm ({self.rf_power_dbm}) is outside "
                              f"source.rf_power_limits_dbm [{lo}, {hi}]")


@dataclass(frozen=True, kw_only=True)
class DetectorCalibrationConfig:
    law: str = spec("square", choices=("square", "power", "table"))
    responsivity_v_per_w: float = spec(1000.0, positive=True)
    exponent: float = spec(1.0, positive=True, help="law: power — V = responsivity · P^exponent")
    table_v: list[float] | None = spec(None, help="law: table — lock-in R (V) …")
    table_w: list[float] | None = spec(None, help="… and the optical power (W) at each")
    aperture_mm: float = spec(0.5, nonneg=True, help="side of the detector's square aperture (0 = point)")


@dataclass(frozen=True, kw_only=True)
class LockInConfig:
    driver: str = spec("sr830", choices=("sr830",))
    address: str = spec(VIRTUAL_ADDRESS)
    time_constant_ms: float = spec(10.0, positive=True)
    filter_slope_db: int = spec(12, choices=(6, 12, 18, 24))
    sensitivity_v: float | None = spec(None, positive=True, help="fixed full scale; none = auto-range")
    detector: DetectorCalibrationConfig = spec(default_factory=DetectorCalibrationConfig)
    timeout_s: float = spec(2.0, positive=True)


@dataclass(frozen=True, kw_only=True)
class AxisConfig:
    port: str = spec(VIRTUAL_ADDRESS, help="serial device, e.g. /dev/ttyUSB0")
    counts_per_mm: float = spec(34555.0, positive=True)
    travel_mm: list[float] = spec(default_factory=lambda: [0.0, 100.0], help="the stage's hardware travel")
    soft_limits_mm: list[float] | None = spec(None, help="moves outside are refused before any byte is sent")
    origin_mm: float = spec(50.0, help="stage position on the optical axis (scan coordinate 0)")
    speed_mm_s: float = spec(20.0, positive=True)
    timeout_s: float = spec(30.0, positive=True)

    def limits_mm(self, axis: str) -> tuple[float, float]:
        lo, hi = _pair(self.travel_mm, f"stages.{axis}.travel_mm")
        if self.soft_limits_mm is not None:
            slo, shi = _pair(self.soft_limits_mm, f"stages.{axis}.soft_limits_mm")
            if slo < lo or shi > hi:
                raise ConfigError(f"stages.{axis}.soft_limits_mm [{slo}, {shi}] must lie inside travel_mm [{lo}, {hi}]")
            return slo, shi
        return lo, hi


@dataclass(frozen=True, kw_only=True)
class StagesConfig:
    x: AxisConfig = spec()
    y: AxisConfig = spec()

    def __post_init__(self):
        for axis in ("x", "y"):
            getattr(self, axis).limits_mm(axis)


@dataclass(frozen=True, kw_only=True)
class LayerErrorConfig:
    dx_mm: float = spec(0.0)
    dy_mm: float = spec(0.0)
    dz_mm: float = spec(0.0)
    rotation_deg: float = spec(0.0)


@dataclass(frozen=True, kw_only=True)
class RandomErrorsConfig:
    seed: int = spec(0)
    lateral_mm: float = spec(0.0, nonneg=True)
    axial_mm: float = spec(0.0, nonneg=True)
    rotation_deg: float = spec(0.0, nonneg=True)


@dataclass(frozen=True, kw_only=True)
class AsBuiltConfig:
    """The hidden truth of a virtual bench."""
    layers: list[LayerErrorConfig] | None = spec(None, help="one entry per layer, in order")
    random: RandomErrorsConfig | None = spec(None, help="or draw per-layer errors at random")
    index_error: float = spec(0.0, range=(-0.5, 0.5), help="relative error of (n − 1)")
    height_step_mm: float = spec(0.0, nonneg=True, help="printer z-step")
    object_offset_mm: list[float] = spec(default_factory=lambda: [0.0, 0.0])
    detector_offset_mm: list[float] = spec(default_factory=lambda: [0.0, 0.0],
                                           help="optical axis minus stages.*.origin_mm")
    detector_dz_mm: float = spec(0.0)
    source_waist_mm: float | None = spec(None, positive=True)
    source_tilt_mrad: list[float] = spec(default_factory=lambda: [0.0, 0.0])
    oversample: int = spec(2, range=(2, 8), help="as-built sampling per neuron (>= 2)")

    def __post_init__(self):
        if self.layers is not None and self.random is not None:
            raise ConfigError("virtual.as_built: give either 'layers' or 'random', not both")
        for key in ("object_offset_mm", "detector_offset_mm", "source_tilt_mrad"):
            if len(getattr(self, key)) != 2:
                raise ConfigError(f"virtual.as_built.{key} must be [x, y]")


@dataclass(frozen=True, kw_only=True)
class NoiseConfig:
    lockin_noise_v: float = spec(1e-7, nonneg=True, help="rms input noise")
    drift_fraction: float = spec(0.0, nonneg=True, help="source power drift amplitude (fraction)")
    drift_period_s: float = spec(600.0, positive=True)
    seed: int = spec(0)


@dataclass(frozen=True, kw_only=True)
class VirtualConfig:
    design: str = spec(help="checkpoint of the installed layer stack (relative to this file or the cwd)")
    time_scale: float = spec(0.0, nonneg=True, help="0 = instant, 1 = real time")
    source_power_uw: float = spec(1.0, positive=True, help="THz power through the object plane")
    as_built: AsBuiltConfig = spec(default_factory=AsBuiltConfig)
    noise: NoiseConfig = spec(default_factory=NoiseConfig)
    faults: dict = spec(default_factory=dict, help="per instrument: source, lockin, stage_x, stage_y, changer")
    addresses_file: str | None = spec(None, help="connect to a running `d2nn-lab bench serve` instead")


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    name: str = spec()
    source: SourceConfig = spec(default_factory=SourceConfig)
    lockin: LockInConfig = spec(default_factory=LockInConfig)
    stages: StagesConfig = spec()
    object_changer: str = spec("manual", choices=("manual", "virtual"))
    virtual: VirtualConfig | None = spec(None)

    def __post_init__(self):
        addresses = [self.source.address, self.lockin.address, self.stages.x.port, self.stages.y.port]
        if self.virtual is None and VIRTUAL_ADDRESS in addresses:
            raise ConfigError("an instrument address is 'virtual' but there is no 'virtual' section; "
                              "give real addresses or add virtual: {design: [...]}")
        if self.virtual is None and self.object_changer == "virtual":
            raise ConfigError("object_changer: virtual needs a 'virtual' section")

    @property
    def is_virtual(self) -> bool:
        return self.virtual is not None

    def to_dict(self) -> dict:
        return to_dict(self)


def _pair(values, key: str) -> tuple[float, float]:
    if len(values) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) \
            or not values[0] < values[1]:
        raise ConfigError(f"{key} must be [low, high] with low < high (got {values})")
    return float(values[0]), float(values[1])


def bench_config_from_dict(data: dict, source: str = "<bench>", base_dir: Path | None = None) -> BenchConfig:
    """Validated config; a virtual bench's design path is resolved against ``base_dir`` (the folder of
    the BENCH.yaml), then the working directory, and must exist."""
    cfg = load_section(BenchConfig, data, source)
    if cfg.virtual is not None:
        design = Path(cfg.virtual.design)
        candidates = ([base_dir / design] if base_dir is not None and not design.is_absolute() else []) + [design]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"{source}: virtual.design {design}: no such checkpoint "
                              f"(train one with `d2nn-lab train` and give its model.pt)")
        cfg = replace(cfg, virtual=replace(cfg.virtual, design=str(found.resolve())))
    return cfg


def load_bench_config(path: str | Path) -> BenchConfig:
    path = Path(path)
    return bench_config_from_dict(read_yaml(path), str(path), path.parent)
