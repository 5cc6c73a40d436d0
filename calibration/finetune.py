"""Recover accuracy by training extra layers on the calibrated, as-built twin.

``d2nn-lab finetune AS_BUILT_TWIN --add-layers K --out DIR``: the printed layers keep their heights and
their fitted as-built poses (frozen); K new layers are appended after them (or inserted after layer
``--after``) and trained so that the whole stack classifies well again. The new layers are exported
for printing (STL + height maps + manifest), and the whole stack is saved as a checkpoint that a
virtual bench can "install" (``virtual.design``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.data import load_dataset, train_validation_split
from model.extend import add_layers
from model.train import evaluate, train


def finetune(as_built_checkpoint: str | Path, add: int, out: str | Path, *, after: int | None = None,
             epochs: int = 2, seed: int = 0, max_train_samples: int | None = None, data_dir=None,
             progress=None, log: Callable[[str], None] = lambda s: None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    printed, payload = load_checkpoint(as_built_checkpoint)
    torch.manual_seed(seed)
    net, new = add_layers(printed, add, after=after, seed=seed)
    printed_idx = [i for i in range(len(net.layers)) if i not in new]
    cfg = net.cfg
    images, labels = load_dataset(cfg.training.dataset, "train", data_dir)
    tr, va = train_validation_split(len(images), cfg.training.validation_fraction, seed)
    if max_train_samples:
        tr = tr[:max_train_samples]
    test_x, test_y = load_dataset(cfg.training.dataset, "test", data_dir)
    before = evaluate(printed, test_x, test_y)["accuracy"]
    log(f"finetune: as-built accuracy {before:.4f} with {len(printed.layers)} printed layers; "
        f"training {add} added layer(s) at {new}")
    kwargs = {"progress": progress} if progress else {}
    result = train(net, images[tr], labels[tr], images[va], labels[va], epochs=epochs, seed=seed,
                   trainable=new, log=log, **kwargs)
    after_acc = evaluate(net, test_x, test_y)["accuracy"]
    metrics = {**result.metrics, "as_built_accuracy": before, "finetuned_accuracy": after_acc,
               "added_layers": new, "printed_layers": printed_idx, "source": str(as_built_checkpoint)}
    checkpoint = save_checkpoint(out / "model.pt", net, metrics, printed_layers=printed_idx)
    from lab.export import export_network
    manifest = export_network(checkpoint, out / "print", layers=new)
    summary = {"checkpoint": str(checkpoint), "as_built_accuracy": before, "finetuned_accuracy": after_acc,
               "added_layers": new, "print_dir": str(out / "print"), "n_test": len(test_y),
               "exported": manifest["layers_exported"]}
    (out / "finetune.json").write_text(json.dumps(summary, indent=2))
    return summary
