"""Add layers to a (printed) network: the "5 printed + 2 added" experiment of Lin et al. 2018.

The printed layers keep their heights and their as-built poses; new layers are appended after the
last one (each one spacing further, the output plane keeping its distance from the last layer) or
inserted evenly between two printed layers (their gap split into equal parts).
"""
from __future__ import annotations

import torch

from .network import D2NN, GLOBAL_NAMES
from .layers import POSE_NAMES


def add_layers(net: D2NN, k: int, after: int | None = None, seed: int = 0) -> tuple[D2NN, list[int]]:
    """(new network, indices of the new layers). ``after`` = index of the layer the new ones follow;
    None appends after the last layer."""
    if k < 1:
        raise ValueError(f"add_layers: k must be >= 1 (got {k})")
    n_old = len(net.layers)
    distances = [d * 1e3 for d in net.cfg.distances_m]
    spacing = net.cfg.layers.spacing_mm
    if after is None or after == n_old - 1:
        after = n_old - 1
        new_distances = distances[:-1] + [spacing] * k + distances[-1:]
    elif 0 <= after < n_old - 1:
        gap = distances[after + 1] / (k + 1)
        new_distances = distances[:after + 1] + [gap] * (k + 1) + distances[after + 2:]
    else:
        raise ValueError(f"add_layers: after must be in 0..{n_old - 1} (got {after})")
    torch.manual_seed(seed)
    bigger = D2NN(net.cfg.with_distances_mm(new_distances), oversample=net.oversample,
                  wavelength_m=net.wavelength_m, material=net.material)
    new_index = list(range(after + 1, after + 1 + k))
    old_index = [i for i in range(len(bigger.layers)) if i not in new_index]
    with torch.no_grad():
        for src, dst in zip(net.layers, (bigger.layers[i] for i in old_index)):
            dst.height_logits.copy_(src.height_logits)
            for name in POSE_NAMES:
                getattr(dst, name).copy_(getattr(src, name))
        for name in GLOBAL_NAMES:
            getattr(bigger, name).copy_(getattr(net, name))
        bigger.log_temperature.copy_(net.log_temperature)
        # New plates start flat (uniform phase: plain free space), so training starts from what the
        # printed stack already does instead of from a random diffuser.
        for i in new_index:
            bigger.layers[i].height_logits.mul_(0.01)
    return bigger, new_index
