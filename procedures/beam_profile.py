"""beam-profile: raster-scan the bare beam (no object) to fix the source's centre, waist, tilt.

On a real bench, take the layers out first to see the source itself; the virtual bench cannot unmount
its layers, so there the profile is the open beam through the printed stack.

    d2nn-lab run beam-profile --bench BENCH.yaml --out RUN_DIR --size-mm 40 40 --step-mm 2

The summary fits a 2-D Gaussian by moments: centre (m) and 1/e² radius w (m) along x and y.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from .base import Point, TestObject, raster_grid_m


@dataclass(frozen=True)
class BeamProfileParameters:
    center_mm: tuple[float, float] = (0.0, 0.0)
    size_mm: tuple[float, float] = (40.0, 40.0)
    step_mm: float = 2.0
    serpentine: bool = True


class BeamProfile:
    name = "beam-profile"
    Parameters = BeamProfileParameters

    def __init__(self, params: BeamProfileParameters):
        self.params = params

    def objects(self):
        return [TestObject("open", None, {"kind": "open"})]

    def points(self) -> list[Point]:
        grid = raster_grid_m(self.params.center_mm, self.params.size_mm, self.params.step_mm, self.params.serpentine)
        return [Point(i, "open", x, y) for i, (x, y) in enumerate(grid)]

    def summarize(self, frame, meta) -> dict:
        return beam_moments(frame["x_m"].to_numpy(), frame["y_m"].to_numpy(), frame["power_w"].to_numpy())

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--center-mm", nargs=2, type=float, default=[0.0, 0.0], metavar=("X", "Y"))
        parser.add_argument("--size-mm", nargs=2, type=float, default=[40.0, 40.0], metavar=("W", "H"))
        parser.add_argument("--step-mm", type=float, default=2.0)
        parser.add_argument("--no-serpentine", action="store_true")

    @classmethod
    def from_args(cls, args) -> "BeamProfile":
        return cls(BeamProfileParameters(center_mm=tuple(args.center_mm), size_mm=tuple(args.size_mm),
                                         step_mm=args.step_mm, serpentine=not args.no_serpentine))


def beam_moments(x_m: np.ndarray, y_m: np.ndarray, power_w: np.ndarray) -> dict:
    """Centre and 1/e² radius from second moments (w = 2σ for a Gaussian intensity)."""
    p = np.clip(power_w, 0, None)
    total = p.sum()
    if total <= 0:
        return {"centre_x_m": None, "centre_y_m": None, "waist_x_m": None, "waist_y_m": None}
    cx, cy = (p * x_m).sum() / total, (p * y_m).sum() / total
    sx = np.sqrt((p * (x_m - cx) ** 2).sum() / total)
    sy = np.sqrt((p * (y_m - cy) ** 2).sum() / total)
    return {"centre_x_m": float(cx), "centre_y_m": float(cy), "waist_x_m": float(2 * sx), "waist_y_m": float(2 * sy),
            "peak_power_w": float(p.max())}


if __name__ == "__main__":
    from lab.runner import procedure_main
    raise SystemExit(procedure_main(BeamProfile))
