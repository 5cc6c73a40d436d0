"""classify: mount K test objects one after another and read the class from the detector regions.

    d2nn-lab run classify --bench BENCH.yaml --out RUN_DIR --twin design/model.pt --count 20

For each object the detector visits every region of the twin's detector layout on a coarse grid
(``--points-per-side``² points inside each square), not the whole plane; a region's energy is the mean
power over its points (all regions have the same area, so the argmax is the class). The summary gives
the measured accuracy, the agreement with the twin's prediction for the same objects, and both
confusion matrices.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from .base import Point, load_objects


@dataclass(frozen=True)
class ClassifyParameters:
    twin: str
    dataset: str = "mnist"
    split: str = "test"
    count: int = 20
    seed: int = 0
    points_per_side: int = 3


class Classify:
    name = "classify"
    Parameters = ClassifyParameters

    def __init__(self, params: ClassifyParameters):
        from model.checkpoint import load_checkpoint
        from model.data import load_dataset
        self.params = params
        self.twin, _ = load_checkpoint(params.twin)
        if self.twin.detector is None:
            raise ValueError(f"--twin {params.twin}: an imaging network has no detector regions to classify with")
        n_available = len(load_dataset(params.dataset, params.split)[1])
        rng = np.random.default_rng(params.seed)
        indices = sorted(rng.choice(n_available, size=min(params.count, n_available), replace=False).tolist())
        self._objects = load_objects([f"{params.dataset}:{params.split}:{i}" for i in indices])

    def objects(self):
        return self._objects

    def region_points_m(self) -> list[tuple[int, float, float]]:
        k = self.params.points_per_side
        det = self.twin.detector
        offsets = ((np.arange(k) + 0.5) / k - 0.5) * det.size_m
        return [(r, cx + ox, cy + oy) for r, (cx, cy) in enumerate(det.centres_m) for oy in offsets for ox in offsets]

    def points(self) -> list[Point]:
        out = []
        for obj in self._objects:
            out.extend(Point(len(out), obj.object_id, x, y, r) for r, x, y in self.region_points_m())
        return out

    def twin_predictions(self) -> dict[str, int]:
        import torch
        self.twin.eval()
        images = torch.stack([torch.as_tensor(o.image) for o in self._objects]).float()
        with torch.no_grad():
            predicted = self.twin(images).argmax(-1).tolist()
        return {o.object_id: p for o, p in zip(self._objects, predicted)}

    def summarize(self, frame, meta) -> dict:
        import torch
        det = self.twin.detector
        labels = {o.object_id: o.info["label"] for o in self._objects}
        twin = self.twin_predictions()
        energies = frame.groupby(["object_id", "region"])["power_w"].mean().unstack("region")
        measured = {}
        for object_id, row in energies.iterrows():
            e = torch.tensor(row.reindex(range(len(det.centres_m))).fillna(0.0).to_numpy())
            measured[object_id] = int(det.scores(e).argmax())
        ids = [o for o in labels if o in measured]
        n = len(ids)
        confusion_measured = np.zeros((10, 10), int)
        confusion_twin = np.zeros((10, 10), int)
        for i in ids:
            confusion_measured[labels[i], measured[i]] += 1
            confusion_twin[labels[i], twin[i]] += 1
        return {
            "n": n,
            "accuracy": sum(measured[i] == labels[i] for i in ids) / n if n else None,
            "twin_accuracy": sum(twin[i] == labels[i] for i in ids) / n if n else None,
            "agreement_with_twin": sum(measured[i] == twin[i] for i in ids) / n if n else None,
            "predictions": {i: {"label": labels[i], "measured": measured[i], "twin": twin[i]} for i in ids},
            "confusion_measured": confusion_measured.tolist(),  # rows = true class, columns = predicted
            "confusion_twin": confusion_twin.tolist(),
        }

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--twin", required=True, help="checkpoint whose detector layout and predictions to use")
        parser.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist")
        parser.add_argument("--split", choices=("train", "test"), default="test")
        parser.add_argument("--count", type=int, default=20, help="number of test objects")
        parser.add_argument("--seed", type=int, default=0, help="which objects are drawn")
        parser.add_argument("--points-per-side", type=int, default=3)

    @classmethod
    def from_args(cls, args) -> "Classify":
        from pathlib import Path
        return cls(ClassifyParameters(twin=str(Path(args.twin).resolve()), dataset=args.dataset, split=args.split,
                                      count=args.count, seed=args.seed, points_per_side=args.points_per_side))


if __name__ == "__main__":
    from lab.runner import procedure_main
    raise SystemExit(procedure_main(Classify))
