"""Checkpoints: one ``.pt`` file (state_dict + geometry as plain data) loadable with weights_only=True,
and a YAML copy of the geometry beside it for people.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml

from .config import network_config_from_dict
from .network import D2NN
from .schema import ConfigError

FORMAT = "d2nn-lab/checkpoint-1"


def save_checkpoint(path: str | Path, net: D2NN, metrics: dict | None = None,
                    printed_layers: list[int] | None = None) -> Path:
    """``printed_layers``: indices of layers that exist as plates (frozen by later fine-tuning)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = net.cfg.to_dict()
    payload = {
        "format": FORMAT,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "metrics": metrics or {},
        "printed_layers": list(printed_layers or []),
    }
    torch.save(payload, path)
    path.with_suffix(".yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load_checkpoint(path: str | Path, **net_kwargs) -> tuple[D2NN, dict]:
    """(network, payload) from ``path``; ``net_kwargs`` go to ``D2NN`` (e.g. oversample, wavelength_m)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a non-checkpoint file
        raise ConfigError(f"{path}: not a d2nn-lab checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a d2nn-lab checkpoint (format {payload.get('format') if isinstance(payload, dict) else None!r})")
    cfg = network_config_from_dict(payload["config"], f"{path} (embedded config)")
    net = D2NN(cfg, **net_kwargs)
    net.load_state_dict(payload["state_dict"])
    return net, payload


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
