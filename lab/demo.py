"""``d2nn-lab demo``: the main job, start to end, on this machine.

Today: train the small MNIST design (or reuse the one already in OUT), evaluate it on held-out digits
and export it for printing. The bench half of the loop (measure → compare → calibrate → fine-tune)
joins here as those parts land.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "small-mnist.yaml"


def run_demo(out: Path, epochs: int = 3, seed: int = 0) -> dict:
    from . import cli

    out.mkdir(parents=True, exist_ok=True)
    design = out / "design"
    checkpoint = design / "model.pt"
    log = lambda msg: print(f"demo: {msg}", file=sys.stderr, flush=True)
    if checkpoint.is_file():
        log(f"reusing the trained design {checkpoint}")
    else:
        log(f"1/3 training the small design ({DEMO_CONFIG.name}, {epochs} epochs)")
        rc = cli.main(["train", "--config", str(DEMO_CONFIG), "--out", str(design), "--epochs", str(epochs),
                       "--seed", str(seed)])
        if rc != 0:
            raise cli.UsageError(f"training the demo design failed (exit {rc}); see the message above")
    log("2/3 evaluating on the held-out digits")
    from model.checkpoint import load_checkpoint
    from model.data import load_dataset
    from model.train import evaluate
    net, _ = load_checkpoint(checkpoint)
    images, labels = load_dataset("mnist", "test")
    accuracy = evaluate(net, images, labels)["accuracy"]
    log("3/3 exporting the layers for printing")
    from .export import export_network
    manifest = export_network(checkpoint, out / "print")
    summary = {"design_checkpoint": str(checkpoint), "design_accuracy": accuracy,
               "n_test": len(labels), "print_dir": str(out / "print"), "layers": len(manifest["layers"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
