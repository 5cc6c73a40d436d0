"""The virtual bench: every emulator of a BENCH.yaml in one process, wired to the as-built optics.

``VirtualBench(cfg)`` starts, all on 127.0.0.1 and sharing one :class:`~lab.virtual.clock.Clock`:

- the E8257D synthesizer (SCPI over TCP),
- the SR830 lock-in (its command set over TCP),
- two KDC101-class APT controllers, ``x`` and ``y``, each on its own pseudo-terminal,
- the object changer (line protocol over TCP),

and connects them through the physics of the printed network (:class:`AsBuiltOptics`):

``signal (V rms at the lock-in input, at the reference frequency)``
    ``= response(P) × modulation_factor`` while the synthesizer's RF output is on, else 0 (the lock-in
    then shows only its noise). ``P`` (W) is ``optics.detector_power_w(x_opt, y_opt, object, f, k)``:

    - ``x_opt = (stage_x − stages.x.origin_mm − as_built.detector_offset_mm[0])`` in m (same for y):
      the detector's position relative to the optical axis, from the *emulated* stage position (the
      truth, not what a driver believes);
    - ``f = synthesizer frequency × source.multiplier`` (another frequency → another wavelength);
    - ``k = 10^((P_rf − source.rf_power_dbm)/10) × (1 + drift)``: THz power is taken as linear in the
      RF drive power in mW relative to the config's nominal (a saturated multiplier chain is flatter;
      good enough to make "less RF → less signal" true), times the slow power drift
      ``drift_fraction · sin(2π t / drift_period_s)``.

``response`` and the square-wave factor
    The pulse modulation switches the THz beam fully on and off (a 0/1 square wave). A lock-in
    measures the rms of the *fundamental* of its input: a square wave between 0 and V has a
    fundamental of amplitude 2V/π, rms √2·V/π ≈ 0.450·V. The config's detector calibration
    (``lockin.detector``) is, as ``instruments.lockin.SquareLaw`` documents, "lock-in R per W" and
    already contains that factor. So the emulated detector's on-state DC response is the configured
    law divided by √2/π, and the lock-in R of a settled reading is exactly the configured law of P:
    the bench's calibration is the truth (plus noise). AM (not used by the bench) is modelled roughly
    as the same square wave scaled by the AM depth. No modulation → nothing at the reference.

The lock-in's reference is the synthesizer's modulation rate while modulation is on, else None
(reference unlocked). ``noise.lockin_noise_v`` is the rms noise on X (and Y) at the configured time
constant and slope (converted to the SR830 emulator's V/√Hz). While time runs (``time_scale > 0``) a
small physics thread tells the lock-in the moment its input changes (stage moving/arrived, RF or
modulation switched, object changed), so a reading right after a move is partly settled.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lab.config import BenchConfig
from lab.virtual.apt import AptController
from lab.virtual.changer import ChangerServer
from lab.virtual.clock import Clock
from lab.virtual.faults import faults_by_instrument
from lab.virtual.optics import AsBuilt, AsBuiltOptics, LayerError
from lab.virtual.sr830 import ENBW_TIMES_TAU, SR830Server
from lab.virtual.synth import SynthServer
from model.schema import ConfigError

log = logging.getLogger(__name__)

__all__ = ["VirtualBench", "SQUARE_WAVE_FUNDAMENTAL_RMS", "as_built_from_config", "FAULT_KINDS"]

# rms of the fundamental of a 0/1 square wave, per unit of its "on" level: (2/π)/√2.
SQUARE_WAVE_FUNDAMENTAL_RMS = math.sqrt(2.0) / math.pi

# BENCH.yaml's virtual.faults names → emulator kind
FAULT_KINDS = {"source": "synth", "lockin": "lockin", "stage_x": "stage", "stage_y": "stage",
               "changer": "changer"}

PHYSICS_TICK_S = 0.001  # real seconds between physics-thread polls (only when time runs)
NO_OBJECT = "__open__"  # optics key of the bare beam (nothing mounted)


def as_built_from_config(cfg: BenchConfig, n_layers: int) -> AsBuilt:
    """The hidden truth in SI units from ``virtual.as_built`` (mm, deg, mrad in the file)."""
    a = cfg.virtual.as_built
    others = dict(
        index_scale=1.0 + a.index_error,
        height_step_m=a.height_step_mm * 1e-3,
        object_dx_m=a.object_offset_mm[0] * 1e-3,
        object_dy_m=a.object_offset_mm[1] * 1e-3,
        detector_dz_m=a.detector_dz_mm * 1e-3,
        source_waist_m=None if a.source_waist_mm is None else a.source_waist_mm * 1e-3,
        source_tilt_x_rad=a.source_tilt_mrad[0] * 1e-3,
        source_tilt_y_rad=a.source_tilt_mrad[1] * 1e-3,
        aperture_m=cfg.lockin.detector.aperture_mm * 1e-3,
        oversample=a.oversample,
    )
    if a.random is not None:
        r = a.random
        return AsBuilt.random(n_layers, r.seed, r.lateral_mm * 1e-3, r.axial_mm * 1e-3,
                              math.radians(r.rotation_deg), **others)
    layers: tuple[LayerError, ...] = ()
    if a.layers is not None:
        if len(a.layers) != n_layers:
            raise ConfigError(f"virtual.as_built.layers has {len(a.layers)} entries but the design "
                              f"{cfg.virtual.design} has {n_layers} layers; give one entry per layer")
        layers = tuple(LayerError(e.dx_mm * 1e-3, e.dy_mm * 1e-3, e.dz_mm * 1e-3, math.radians(e.rotation_deg))
                       for e in a.layers)
    return AsBuilt(layers=layers, **others)


def _detector_law(cfg: BenchConfig):
    """P (W) → lock-in R (V rms) of a settled reading: the inverse of the configured calibration."""
    d = cfg.lockin.detector
    if d.law == "square":
        return lambda p_w: d.responsivity_v_per_w * p_w
    if d.law == "power":
        return lambda p_w: d.responsivity_v_per_w * max(p_w, 0.0) ** d.exponent
    if d.table_v is None or d.table_w is None or len(d.table_v) != len(d.table_w) or len(d.table_v) < 2:
        raise ConfigError("lockin.detector: law 'table' needs table_v and table_w of the same length >= 2")
    table_w, table_v = np.asarray(d.table_w, float), np.asarray(d.table_v, float)
    return lambda p_w: float(np.interp(p_w, table_w, table_v))


class VirtualBench:
    """All emulators of a virtual BENCH.yaml, started in this process (threads), bound to 127.0.0.1.

    Use as a context manager (or call :meth:`close`). ``truth()`` is the hidden as-built model: only
    reports and tests may read it.
    """

    def __init__(self, cfg: BenchConfig):
        if cfg.virtual is None:
            raise ConfigError("VirtualBench needs a bench config with a 'virtual' section")
        self.cfg = cfg
        v = cfg.virtual
        self.clock = Clock(v.time_scale)
        try:
            faults = faults_by_instrument(v.faults, {name: kind for name, kind in FAULT_KINDS.items()},
                                          where="virtual.faults")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        from model.checkpoint import load_checkpoint
        design, _ = load_checkpoint(v.design)
        self._truth = as_built_from_config(cfg, len(design.layers))
        self.optics = AsBuiltOptics(v.design, self._truth, source_power_w=v.source_power_uw * 1e-6)
        self.detector_offset_m = tuple(o * 1e-3 for o in v.as_built.detector_offset_mm)
        self._law = _detector_law(cfg)
        self._optics_lock = threading.Lock()
        self._drift_t0 = time.monotonic()
        self._warned_ids: set[str] = set()

        noise = v.noise
        tc_s = cfg.lockin.time_constant_ms * 1e-3
        enbw_hz = ENBW_TIMES_TAU[(6, 12, 18, 24).index(cfg.lockin.filter_slope_db)] / tc_s
        noise_v_per_rthz = noise.lockin_noise_v / math.sqrt(enbw_hz)

        self._servers: list[Any] = []
        self._stopping = threading.Event()
        self._physics: threading.Thread | None = None
        try:
            self.synth = SynthServer(faults=faults["source"]).start()
            self._servers.append(self.synth)
            self.lockin = SR830Server(self._signal_v, self.synth.synth.reference_frequency_hz,
                                                self.clock, faults=faults["lockin"],
                                                noise_v_per_rthz=noise_v_per_rthz, seed=noise.seed).start()
            self._servers.append(self.lockin)
            self.stages: dict[str, AptController] = {}
            for i, axis in enumerate(("x", "y")):
                a = getattr(cfg.stages, axis)
                lo, _ = a.travel_mm
                ctrl = AptController(self.clock, counts_per_mm=a.counts_per_mm, travel_mm=tuple(a.travel_mm),
                                     max_speed_mm_s=a.speed_mm_s, home_speed_mm_s=a.speed_mm_s,
                                     speed_mm_s=a.speed_mm_s,
                                     initial_position_mm=lo, faults=faults[f"stage_{axis}"],
                                     serial_number=27000001 + i, name=axis)
                self.stages[axis] = ctrl.start()
                self._servers.append(ctrl)
            self.changer = ChangerServer(faults=faults["changer"]).start()
            self._servers.append(self.changer)
            self.optics_power_map(NO_OBJECT, None, cfg.source.freq_ghz * 1e9)  # warm the cache
            if not self.clock.instant:
                self._physics = threading.Thread(target=self._physics_loop, name="virtual-bench-physics",
                                                 daemon=True)
                self._physics.start()
        except BaseException:
            self.close()
            raise

    # ---- physics ----------------------------------------------------------------------------------
    def stage_position_mm(self, axis: str) -> float:
        return self.stages[axis].state().position_mm

    def optical_position_m(self) -> tuple[float, float]:
        """Detector position relative to the optical axis (m), from the emulated stages."""
        sx, sy = self.cfg.stages.x, self.cfg.stages.y
        x = (self.stage_position_mm("x") - sx.origin_mm) * 1e-3 - self.detector_offset_m[0]
        y = (self.stage_position_mm("y") - sy.origin_mm) * 1e-3 - self.detector_offset_m[1]
        return x, y

    def current_object(self) -> tuple[str, np.ndarray | None]:
        """(optics key, image in [0, 1] or None) of the mounted object."""
        object_id, image = self.changer.current_object()
        if object_id is None:
            return NO_OBJECT, None
        if image is None:
            if object_id not in self._warned_ids:
                self._warned_ids.add(object_id)
                log.warning("virtual changer: object %r was mounted without an image; the optics see "
                            "the open beam", object_id)
            return NO_OBJECT, None
        digest = hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()[:12]
        return f"{object_id}#{digest}", image.astype(np.float32) / 255.0

    def output_frequency_hz(self) -> float:
        return self.synth.state().frequency_hz * self.cfg.source.multiplier

    def power_factor(self) -> float:
        """RF power relative to nominal (linear in mW) × (1 + drift)."""
        st = self.synth.state()
        factor = 10.0 ** ((st.power_dbm - self.cfg.source.rf_power_dbm) / 10.0)
        n = self.cfg.virtual.noise
        if n.drift_fraction:
            t_s = self.clock.now_s()
            if not math.isfinite(t_s):  # instant clock: no emulated time; drift with real time
                t_s = time.monotonic() - self._drift_t0
            factor *= 1.0 + n.drift_fraction * math.sin(2 * math.pi * t_s / n.drift_period_s)
        return factor

    def optics_power_map(self, key: str, image, freq_hz: float):
        with self._optics_lock:
            return self.optics.power_map(key, image, freq_hz)

    def detector_power_w(self) -> float:
        """Optical power on the detector now (W), whatever the RF state (for tests and reports)."""
        x_m, y_m = self.optical_position_m()
        key, image = self.current_object()
        with self._optics_lock:
            return self.optics.detector_power_w(x_m, y_m, key, image, self.output_frequency_hz(),
                                                self.power_factor())

    def modulation_factor(self) -> float:
        st = self.synth.state()
        if not st.modulation_on:
            return 0.0
        if st.modulation_kind == "am":
            return SQUARE_WAVE_FUNDAMENTAL_RMS * st.am_depth_percent / 100.0
        return SQUARE_WAVE_FUNDAMENTAL_RMS

    def expected_r_v(self, power_w: float) -> float:
        """Settled lock-in R (V) for an optical power with the beam on and pulse-modulated."""
        return self._law(power_w)

    def _signal_v(self) -> float:
        """The SR830's input at the reference frequency (V rms); called by the lock-in emulator."""
        st = self.synth.state()
        if not st.rf_on or not st.modulation_on:
            return 0.0
        try:
            power_w = self.detector_power_w()
        except Exception:  # noqa: BLE001 - never kill the lock-in's server thread
            log.exception("virtual bench: optics failed; the detector sees nothing")
            return 0.0
        on_level_v = self._law(power_w) / SQUARE_WAVE_FUNDAMENTAL_RMS
        return on_level_v * self.modulation_factor()

    def _physics_signature(self) -> tuple:
        s = self.synth.state()
        x, y = self.stages["x"].state(), self.stages["y"].state()
        return (s.rf_on, s.frequency_hz, s.power_dbm, s.modulation_on, s.modulation_frequency_hz,
                x.position_mm, y.position_mm, self.changer.current_object()[0])

    def _physics_loop(self) -> None:
        last = None
        while not self._stopping.wait(PHYSICS_TICK_S):
            try:
                signature = self._physics_signature()
                if signature != last:
                    last = signature
                    self.lockin.input_changed()
            except Exception:  # noqa: BLE001
                if self._stopping.is_set():
                    return
                log.exception("virtual bench: physics tick failed")

    # ---- addresses and state ------------------------------------------------------------------------
    def addresses(self) -> dict[str, Any]:
        """Where the emulators listen: VISA resources, pty paths, the changer's host:port."""
        return {
            "source": self.synth.resource,
            "lockin": self.lockin.resource,
            "stage_x": self.stages["x"].port,
            "stage_y": self.stages["y"].port,
            "changer": f"{self.changer.host}:{self.changer.port}",
            "time_scale": self.clock.time_scale,
        }

    def write_addresses(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = ("# Written by `d2nn-lab bench serve`: where the virtual bench's emulators listen.\n"
                "# Refer to this file from a client BENCH.yaml as virtual.addresses_file.\n")
        path.write_text(text + yaml.safe_dump(self.addresses(), sort_keys=False))
        return path

    def truth(self) -> AsBuilt:
        """The hidden as-built model (ONLY for reports and tests)."""
        return self._truth

    def state(self) -> dict[str, Any]:
        """What the emulated instruments really do now (not what a driver believes)."""
        s = self.synth.state()
        key, _ = self.current_object()
        return {
            "source": {"rf_on": s.rf_on, "rf_frequency_hz": s.frequency_hz,
                       "output_frequency_hz": s.frequency_hz * self.cfg.source.multiplier,
                       "rf_power_dbm": s.power_dbm, "modulation_on": s.modulation_on,
                       "modulation_kind": s.modulation_kind,
                       "modulation_frequency_hz": s.modulation_frequency_hz},
            "lockin": self.lockin.lockin.state(),
            "stage_x": dataclasses.asdict(self.stages["x"].state()),
            "stage_y": dataclasses.asdict(self.stages["y"].state()),
            "changer": {"object_id": self.changer.current_object()[0], "optics_key": key},
            "time_scale": self.clock.time_scale,
        }

    # ---- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the physics thread and every emulator (each on its own; failures are logged)."""
        self._stopping.set()
        if self._physics is not None:
            self._physics.join(timeout=2)
            self._physics = None
        for server in reversed(self._servers):
            try:
                server.stop()
            except Exception:  # noqa: BLE001
                log.exception("virtual bench: stopping %s failed", type(server).__name__)
        self._servers = []

    def __enter__(self) -> "VirtualBench":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
