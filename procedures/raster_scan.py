"""raster-scan: for one or several input objects, scan the output plane on a grid.

    d2nn-lab run raster-scan --bench BENCH.yaml --out RUN_DIR --objects mnist:test:0 mnist:test:1 \
        --size-mm 20 20 --step-mm 1
    python -m procedures.raster_scan --bench BENCH.yaml --out RUN_DIR ...
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .base import Point, load_objects, raster_grid_m


@dataclass(frozen=True)
class RasterScanParameters:
    objects: tuple[str, ...] = ("mnist:test:0",)
    center_mm: tuple[float, float] = (0.0, 0.0)
    size_mm: tuple[float, float] = (20.0, 20.0)
    step_mm: float = 1.0
    serpentine: bool = True
    twin: str | None = None  # design checkpoint, recorded (with its sha256) for compare/calibrate


class RasterScan:
    name = "raster-scan"
    Parameters = RasterScanParameters

    def __init__(self, params: RasterScanParameters):
        self.params = params
        self._objects = load_objects(list(params.objects))

    def objects(self):
        return self._objects

    def points(self) -> list[Point]:
        grid = raster_grid_m(self.params.center_mm, self.params.size_mm, self.params.step_mm, self.params.serpentine)
        out = []
        for obj in self._objects:
            out.extend(Point(len(out), obj.object_id, x, y) for x, y in grid)
        return out

    def summarize(self, frame, meta) -> dict:
        per_object = frame.groupby("object_id")["power_w"].agg(["count", "max", "sum"])
        return {"points": int(len(frame)),
                "objects": {k: {"points": int(r["count"]), "peak_power_w": float(r["max"])}
                            for k, r in per_object.iterrows()}}

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--objects", nargs="+", default=["mnist:test:0"],
                            help="dataset:split:index, an image .npy/.png, or 'open'")
        parser.add_argument("--center-mm", nargs=2, type=float, default=[0.0, 0.0], metavar=("X", "Y"))
        parser.add_argument("--size-mm", nargs=2, type=float, default=[20.0, 20.0], metavar=("W", "H"))
        parser.add_argument("--step-mm", type=float, default=1.0)
        parser.add_argument("--no-serpentine", action="store_true", help="every row left to right")
        parser.add_argument("--twin", help="design checkpoint to record with the run (for compare/calibrate)")

    @classmethod
    def from_args(cls, args) -> "RasterScan":
        return cls(RasterScanParameters(objects=tuple(args.objects), center_mm=tuple(args.center_mm),
                                        size_mm=tuple(args.size_mm), step_mm=args.step_mm,
                                        serpentine=not args.no_serpentine,
                                        twin=str(Path(args.twin).resolve()) if args.twin else None))


if __name__ == "__main__":
    from lab.runner import procedure_main
    raise SystemExit(procedure_main(RasterScan))
