"""Measured output-plane scans, as the calibration sees them.

A scan is the set of points measured for one input object: nominal detector coordinates (x, y) on the
optical-axis frame the stages were told about, and the linear optical power measured there. Several runs
and several objects are pooled; the object images come from each run's ``objects/`` folder. Nothing here
knows the bench's truth: only what a run directory holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.store import load_object, load_run


class CalibrationDataError(Exception):
    """The runs cannot be used for a calibration (no usable points, missing object images…)."""


@dataclass(frozen=True)
class ObjectScan:
    """One object's measured output-plane points (SI units)."""
    object_id: str
    image: np.ndarray          # (h, w) in [0, 1]: the object's amplitude mask, as the twin takes it
    x_m: np.ndarray            # (N,) nominal detector coordinates
    y_m: np.ndarray
    power_w: np.ndarray        # (N,) linear optical power

    @property
    def n_points(self) -> int:
        return len(self.power_w)


def _as_unit_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.max(initial=0.0) > 1.0:  # stored as 8-bit grey levels
        img = img / 255.0
    return np.clip(img, 0.0, 1.0)


def load_scans(run_dirs: list[str | Path]) -> tuple[list[ObjectScan], list[str]]:
    """Object scans pooled from raster-scan runs, and notes on what was left out (and why).

    Points of one object id measured in several runs are pooled. Beam-profile runs and points without
    an object image are left out (the source beam is not fitted; see ``fit.py``).
    """
    pooled: dict[str, dict] = {}
    notes: list[str] = []
    for run_dir in run_dirs:
        frame, meta = load_run(run_dir)
        procedure = meta.get("procedure")
        if procedure == "beam-profile":
            notes.append(f"{run_dir}: beam-profile run left out (the source beam is not a fitted parameter)")
            continue
        needed = {"object_id", "x_m", "y_m", "power_w"}
        if not needed <= set(frame.columns):
            raise CalibrationDataError(f"{run_dir}: data.csv lacks columns {sorted(needed - set(frame.columns))}")
        frame = frame[np.isfinite(frame["power_w"]) & np.isfinite(frame["x_m"]) & np.isfinite(frame["y_m"])]
        for object_id, rows in frame.groupby("object_id", sort=True):
            object_id = str(object_id)
            image = load_object(run_dir, object_id)
            if image is None:
                notes.append(f"{run_dir}: object {object_id!r} has no image in objects/; its "
                             f"{len(rows)} points are left out")
                continue
            entry = pooled.setdefault(object_id, {"image": _as_unit_image(image), "x": [], "y": [], "p": []})
            entry["x"].append(rows["x_m"].to_numpy(float))
            entry["y"].append(rows["y_m"].to_numpy(float))
            entry["p"].append(rows["power_w"].to_numpy(float))
    scans = [ObjectScan(oid, e["image"], np.concatenate(e["x"]), np.concatenate(e["y"]), np.concatenate(e["p"]))
             for oid, e in sorted(pooled.items())]
    if not scans:
        raise CalibrationDataError("no usable raster-scan points with object images in "
                                   + ", ".join(str(r) for r in run_dirs))
    return scans, notes


def twin_from_runs(run_dirs: list[str | Path]) -> str | None:
    """The design checkpoint a run names in meta['twin'] (first found), if any."""
    for run_dir in run_dirs:
        _, meta = load_run(run_dir)
        twin = meta.get("twin")
        if isinstance(twin, dict):
            twin = twin.get("path") or twin.get("checkpoint")
        if twin:
            return str(twin)
    return None
