"""What a procedure is: a plain description of a measurement.

A procedure says which objects to mount and which points to measure, in order; it never opens a port.
``lab.runner.run`` executes it on a ``Bench``: it mounts the objects, moves, waits for the lock-in to
settle, reads, stores each point as it is measured, handles overload/unlock and resume, and keeps the
hardware safe. Procedures add an optional ``summarize(frame)`` that turns the measured rows into the
figures printed (and stored in meta.json) at the end.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lab.errors import UsageError


@dataclass(frozen=True)
class Point:
    point: int          # unique key within the run (what --resume looks for)
    object_id: str
    x_m: float          # detector position, optical-axis coordinates
    y_m: float
    region: int = -1    # detector region this point samples (classify), −1 otherwise


@dataclass(frozen=True)
class TestObject:
    object_id: str
    image: np.ndarray | None  # None = nothing in the beam (beam profile)
    info: dict = field(default_factory=dict)


def raster_grid_m(center_mm: tuple[float, float], size_mm: tuple[float, float], step_mm: float,
                  serpentine: bool = True) -> list[tuple[float, float]]:
    """Grid points (x, y) in metres covering size around centre; rows along x, serpentine by default
    (every other row reversed so the stage never flies back across the plane)."""
    if step_mm <= 0:
        raise UsageError(f"--step-mm must be > 0 (got {step_mm})")
    nx = int(math.floor(size_mm[0] / step_mm + 1e-9)) + 1
    ny = int(math.floor(size_mm[1] / step_mm + 1e-9)) + 1
    xs = (np.arange(nx) - (nx - 1) / 2) * step_mm + center_mm[0]
    ys = (np.arange(ny) - (ny - 1) / 2) * step_mm + center_mm[1]
    points = []
    for row, y in enumerate(ys):
        line = xs[::-1] if serpentine and row % 2 else xs
        points.extend((float(x) * 1e-3, float(y) * 1e-3) for x in line)
    return points


def load_objects(specs: list[str]) -> list[TestObject]:
    """Objects from specs: ``mnist:test:17`` / ``fashion-mnist:test:3`` (dataset:split:index), a .npy or
    .png image file, or ``open`` (no object in the beam)."""
    out = []
    for spec in specs:
        if spec == "open":
            out.append(TestObject("open", None, {"kind": "open"}))
            continue
        parts = spec.split(":")
        if len(parts) == 3 and parts[0] in ("mnist", "fashion-mnist"):
            from model.data import load_dataset
            name, split, index = parts
            try:
                index = int(index)
            except ValueError:
                raise UsageError(f"object '{spec}': index must be an integer") from None
            images, labels = load_dataset(name, split)
            if not 0 <= index < len(images):
                raise UsageError(f"object '{spec}': index out of range 0..{len(images) - 1}")
            out.append(TestObject(f"{name}-{split}-{index}", images[index].numpy(),
                                  {"dataset": name, "split": split, "index": index, "label": int(labels[index])}))
            continue
        path = Path(spec)
        if path.suffix.lower() in (".npy", ".png"):
            from lab.images import load_image
            out.append(TestObject(path.stem, load_image(path), {"file": str(path)}))
            continue
        raise UsageError(f"object '{spec}': expected dataset:split:index (e.g. mnist:test:17), "
                         f"an image .npy/.png, or 'open'")
    ids = [o.object_id for o in out]
    if len(set(ids)) != len(ids):
        raise UsageError(f"objects: duplicate object ids in {ids}")
    return out


def parameters_dict(params) -> dict:
    """A procedure's parameters as plain data (stored in meta.json, compared on --resume)."""
    return asdict(params)
