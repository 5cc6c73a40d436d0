"""The fitted parameters as one vector, in internal units chosen so that 1 unit moves the output
about as much for every parameter (lateral: one neuron pitch; rotation: the angle that moves the plate's
edge by one pitch; axial: 1 mm; index scale: 1 %). This keeps Gauss-Newton steps well conditioned.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model.network import D2NN

LAYER_POSE = ("dx_m", "dy_m", "dz_m", "rotation_rad")


@dataclass(frozen=True)
class Param:
    name: str          # "layer2.dx_m", "detector_dx_m", "object_dy_m", "index_scale", …
    unit: float        # SI value of one internal unit
    offset: float = 0.0  # SI value at internal 0 (1 for the index scale)


class ParamSpace:
    """Reads and writes the twin's (and the data model's) as-built parameters from a vector."""

    def __init__(self, net: D2NN, data_model, fit_index_scale: bool = False, fit_object_offset: bool = True):
        self.net, self.data_model = net, data_model
        pitch = net.cfg.pitch_m
        rot_unit = pitch / (net.cfg.grid.neurons * pitch / 2)
        params = []
        for i in range(len(net.layers)):
            params += [Param(f"layer{i}.dx_m", pitch), Param(f"layer{i}.dy_m", pitch),
                       Param(f"layer{i}.dz_m", 1e-3), Param(f"layer{i}.rotation_rad", rot_unit)]
        if fit_object_offset:
            params += [Param("object_dx_m", pitch), Param("object_dy_m", pitch)]
        params += [Param("detector_dx_m", pitch), Param("detector_dy_m", pitch), Param("detector_dz_m", 1e-3)]
        if fit_index_scale:
            params.append(Param("index_scale", 0.01, 1.0))
        self.params = params
        self.names = [p.name for p in params]

    def __len__(self) -> int:
        return len(self.params)

    def _tensor(self, name: str) -> torch.Tensor:
        if name.startswith("layer"):
            i, attr = name[5:].split(".", 1)
            return getattr(self.net.layers[int(i)], attr)
        if name in ("detector_dx_m", "detector_dy_m"):
            return getattr(self.data_model, name)
        return getattr(self.net, name)

    def get(self) -> torch.Tensor:
        return torch.tensor([(float(self._tensor(p.name)) - p.offset) / p.unit for p in self.params],
                            dtype=torch.float64)

    @torch.no_grad()
    def set(self, vector) -> None:
        for p, v in zip(self.params, [float(v) for v in vector]):
            self._tensor(p.name).fill_(p.offset + v * p.unit)

    def si(self, vector) -> dict[str, float]:
        return {p.name: p.offset + float(v) * p.unit for p, v in zip(self.params, vector)}

    def first_step(self, name: str) -> int:
        """The first step of ``ScanModel.output_intensity`` a parameter acts on; −1 = sampling only."""
        n_layers = len(self.net.layers)
        if name.startswith("layer"):
            i, attr = name[5:].split(".", 1)
            return 2 * int(i) + (0 if attr == "dz_m" else 1)
        if name in ("detector_dx_m", "detector_dy_m"):
            return -1
        if name == "detector_dz_m":
            return 2 * n_layers
        return 0

    def units(self) -> torch.Tensor:
        return torch.tensor([p.unit for p in self.params], dtype=torch.float64)
