"""Training and evaluation of the twin.

Classification: softmax cross-entropy on temperature × normalised detector energies (Mengu et al.
2019), Adam, a validation split, the best epoch kept. Imaging: the output intensity on the object's
window is trained to reproduce the (normalised) input. ``trainable`` selects the layers that learn —
the rest stay frozen as printed (the "5 printed + 2 added" experiment).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from .network import D2NN, draw_jitter

Progress = Callable[[Iterable, int, str], Iterable]


def _no_progress(iterable, total, desc):
    return iterable


@dataclass
class TrainResult:
    best_state: dict
    metrics: dict = field(default_factory=dict)


def imaging_target(net: D2NN, images: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """The input resized to the object's window on the output grid, and that window's slice."""
    k = net.object_pixels
    lo = (net.n - k) // 2
    target = F.interpolate(images[:, None], size=(k, k), mode="bilinear", align_corners=False)[:, 0]
    return target, slice(lo, lo + k)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.flatten(1).sum(-1).clamp(min=1e-20)[:, None, None]


def batch_loss(net: D2NN, images: torch.Tensor, labels: torch.Tensor, jitter=None):
    """(loss, logits) for one batch; logits is None for imaging."""
    if net.cfg.task == "imaging":
        intensity = net.output_intensity(images, jitter)
        target, window = imaging_target(net, images)
        out = intensity[:, window, window]
        loss = F.mse_loss(_normalised(out), _normalised(target)) * out[0].numel()
        return loss, None
    logits = net(images, jitter)
    return F.cross_entropy(logits, labels), logits


@torch.no_grad()
def evaluate(net: D2NN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128,
             progress: Progress = _no_progress) -> dict:
    """Accuracy (classification) or mean normalised-MSE (imaging) with the network as printed."""
    was_training = net.training
    net.eval()
    correct, loss_sum = 0, 0.0
    predictions = []
    starts = range(0, len(images), batch_size)
    for start in progress(starts, len(starts), "evaluate"):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        loss, logits = batch_loss(net, x, y)
        loss_sum += float(loss) * len(x)
        if logits is not None:
            predictions.append(logits.argmax(-1))
            correct += int((predictions[-1] == y).sum())
    net.train(was_training)
    n = len(images)
    out = {"n": n, "loss": loss_sum / max(n, 1)}
    if net.cfg.task == "classification":
        out["accuracy"] = correct / max(n, 1)
        out["predictions"] = torch.cat(predictions).tolist() if predictions else []
    return out


def train(net: D2NN, train_images: torch.Tensor, train_labels: torch.Tensor,
          val_images: torch.Tensor, val_labels: torch.Tensor, *, epochs: int, seed: int = 0,
          trainable: list[int] | None = None, progress: Progress = _no_progress,
          log: Callable[[str], None] = lambda s: None, device: str = "cpu",
          time_budget_s: float | None = None) -> TrainResult:
    """Train in place; returns the best epoch's state (by validation accuracy, or loss for imaging).

    ``time_budget_s``: stop before an epoch that would not finish within the budget (judged by the
    last epoch's duration)."""
    tc = net.cfg.training
    trainable = list(range(len(net.layers))) if trainable is None else trainable
    for i, layer in enumerate(net.layers):
        layer.height_logits.requires_grad_(i in trainable)
    params = [net.layers[i].height_logits for i in trainable]
    if net.log_temperature.requires_grad:
        params.append(net.log_temperature)
    optimizer = torch.optim.Adam(params, lr=tc.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    net.to(device)
    history, best_score, best_state = [], None, copy.deepcopy(net.state_dict())
    n, bs = len(train_images), tc.batch_size
    t_start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        batches = range(0, n, bs)
        for start in progress(batches, len(batches), f"epoch {epoch + 1}/{epochs}"):
            idx = order[start:start + bs]
            x, y = train_images[idx].to(device), train_labels[idx].to(device)
            jitter = draw_jitter(len(net.layers), tc.vaccination, generator) if tc.vaccination.enabled else None
            loss, logits = batch_loss(net, x, y, jitter)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
            if logits is not None:
                correct += int((logits.argmax(-1) == y).sum())
        val = evaluate(net, val_images.to(device), val_labels.to(device)) if len(val_images) else {}
        row = {"epoch": epoch + 1, "train_loss": loss_sum / n, "elapsed_s": time.perf_counter() - t_start}
        if net.cfg.task == "classification":
            row["train_accuracy"] = correct / n
            row["val_accuracy"] = val.get("accuracy")
            score = val.get("accuracy", row["train_accuracy"])
        else:
            row["val_loss"] = val.get("loss")
            score = -val.get("loss", row["train_loss"])
        history.append(row)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if best_score is None or score > best_score:
            best_score, best_state = score, copy.deepcopy(net.state_dict())
        if time_budget_s is not None:
            epoch_s = row["elapsed_s"] - (history[-2]["elapsed_s"] if len(history) > 1 else 0.0)
            if row["elapsed_s"] + epoch_s > time_budget_s:
                log(f"stopping: another epoch (~{epoch_s:.0f} s) would pass the {time_budget_s:.0f} s budget")
                break
    net.load_state_dict(best_state)
    return TrainResult(best_state, {"history": history, "best_score": best_score,
                                    "train_time_s": time.perf_counter() - t_start, "seed": seed,
                                    "n_train": n, "n_validation": len(val_images)})
