"""Shared fixtures: a tiny network (fast enough to train inside a test) with the reference physics."""
from __future__ import annotations

import copy

import pytest
import torch

from model.config import network_config_from_dict

TINY = {
    "name": "tiny",
    "freq_ghz": 400,
    "grid": {"neurons": 32, "pitch_mm": 0.4},
    "layers": {"count": 3, "spacing_mm": 10},
    "input": {"object_size_mm": 8.0},
    "detector": {"layout": "lin2018", "region_size_mm": 1.2, "region_spacing_mm": 2.8},
    "training": {"epochs": 3, "batch_size": 32, "learning_rate": 0.05, "validation_fraction": 0.1},
}


@pytest.fixture
def tiny_dict():
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_config(tiny_dict):
    return network_config_from_dict(tiny_dict, "tiny")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An untrained TINY design on disk (bench, optics and report tests need a real checkpoint)."""
    from model.checkpoint import save_checkpoint
    from model.network import D2NN
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("design") / "model.pt",
                           D2NN(network_config_from_dict(copy.deepcopy(TINY))))
