"""The data model: what the detector should read, given the twin and its as-built parameters.

``measured(x, y) ≈ a_k · (box_aperture ∗ I_k)(x + ox, y + oy) + b_k`` for object k, where I_k is the twin's
output intensity, the box filter is the detector's square aperture (fractional edge weights), (ox, oy)
is the fitted detector-plane offset (stage frame → optical axis: the model is sampled at nominal + offset)
and a_k, b_k are the object's intensity scale and background, solved in closed form (linear least
squares) at every evaluation — variable projection: cheaper and better conditioned than descending on
them, and the gradient with respect to the other parameters is unchanged at the linear optimum.

Per-object scales (not one global scale): the lock-in sees source power drift and per-object throughput
changes (mounting, tilt) between objects; what carries the pose information is each map's *shape*.
Each object's residual is divided by the spread of its measured values, so every object weighs the same
whatever its brightness, and the loss reads as "fraction of measured variance left unexplained"
(0 = perfect, 1 = no better than a constant).

Coarse-to-fine: ``smoothing_m`` > 0 replaces measured and modelled samples alike by their Gaussian-weighted
average over the object's neighbouring points (the same linear smoother on both sides, so the comparison
stays exact for any point layout), which widens the basins of the lateral parameters.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from model.detector import aperture_kernel
from model.layers import resample_pose
from model.network import D2NN

from .data import ObjectScan


def _smoother(x: np.ndarray, y: np.ndarray, sigma_m: float) -> torch.Tensor | None:
    """Row-normalised Gaussian weights between an object's points (sparse, cut at 3σ)."""
    if sigma_m <= 0:
        return None
    from scipy.spatial import cKDTree
    pts = np.stack([x, y], 1)
    pairs = cKDTree(pts).query_pairs(3 * sigma_m, output_type="ndarray")
    i = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(len(x))])
    j = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(len(x))])
    w = np.exp(-((pts[i] - pts[j]) ** 2).sum(1) / (2 * sigma_m ** 2))
    rowsum = np.bincount(i, weights=w, minlength=len(x))
    w = w / rowsum[i]
    return torch.sparse_coo_tensor(np.stack([i, j]), torch.as_tensor(w, dtype=torch.float32),
                                   (len(x), len(x)), check_invariants=False).coalesce()


class ScanModel:
    """Modelled readings at the measured points of several object scans, for one twin."""

    def __init__(self, net: D2NN, scans: list[ObjectScan], aperture_m: float,
                 resample_transmission: bool = False, plate_supersample: int = 2):
        self.net = net
        self.resample_transmission = resample_transmission
        self.plate_supersample = plate_supersample
        with torch.no_grad():  # the printed heights never change during a calibration: precompute
            self._heights = []
            for layer in net.layers:
                h = layer.heights_m()
                if net.oversample > 1:
                    h = h.repeat_interleave(net.oversample, 0).repeat_interleave(net.oversample, 1)
                self._heights.append(h.detach())
            s = plate_supersample
            self._fine_heights = [h.repeat_interleave(s, 0).repeat_interleave(s, 1) for h in self._heights]
        self._free = torch.tensor([1.0, 0.0])[:, None, None]
        self.scans = scans
        kernel = aperture_kernel(aperture_m, net.pitch_m)
        self.kernel = None if kernel is None else kernel.float()
        shapes = {s.image.shape for s in scans}
        if len(shapes) != 1:
            raise ValueError(f"all object images must share one shape, got {sorted(shapes)}")
        self.images = torch.as_tensor(np.stack([s.image for s in scans]), dtype=torch.float32)
        half_width_m = net.n * net.pitch_m / 2  # grid_sample, align_corners=False: ±1 = outer pixel edges
        self._half_width_m = half_width_m
        self.x = [torch.as_tensor(s.x_m, dtype=torch.float64) for s in scans]
        self.y = [torch.as_tensor(s.y_m, dtype=torch.float64) for s in scans]
        self.measured = [torch.as_tensor(s.power_w, dtype=torch.float64) for s in scans]
        self.n_points = sum(s.n_points for s in scans)
        self.detector_dx_m = torch.zeros((), dtype=torch.float64)
        self.detector_dy_m = torch.zeros((), dtype=torch.float64)
        self.set_smoothing(0.0)

    # ---- coarse-to-fine ------------------------------------------------------------------------
    def set_smoothing(self, sigma_m: float) -> None:
        self.smoothing_m = sigma_m
        self._smooth = [_smoother(s.x_m, s.y_m, sigma_m) for s in self.scans]
        targets = [self._apply(S, m) for S, m in zip(self._smooth, self.measured)]
        self._targets = targets
        # Each object's residual is scaled by 1/‖y − ȳ‖ (and 1/√K): loss = mean unexplained fraction.
        k = len(self.scans)
        self._weights = [1.0 / (float((t - t.mean()).norm()) * math.sqrt(k) + 1e-300) for t in targets]

    @staticmethod
    def _apply(S, v: torch.Tensor) -> torch.Tensor:
        if S is None:
            return v
        return torch.sparse.mm(S.to(v.dtype), v[:, None])[:, 0]

    # ---- model -----------------------------------------------------------------------------------
    def output_intensity(self, cache: list | None = None, start_step: int = 0) -> torch.Tensor:
        """(K, n, n) the twin's output intensity for the scanned objects.

        The twin's physics, written as 2L + 1 steps (propagate to layer 0, pass layer 0, …, propagate to
        the output plane). ``cache`` (a list) receives the field entering every step; with
        ``start_step`` > 0 the computation restarts from a cached field — a parameter that first acts at
        step s (the pose of layer j: step 2j + 1; its spacing: step 2j) only needs the steps from s on,
        which halves the cost of a finite-difference Jacobian.

        ``resample_transmission``: resample the complex transmission of the plate instead of its height
        map (``D2NN`` does heights). For a plate of square pillars moved by less than a pixel a twin
        pixel then sees the area-weighted mix of the two pillars' transmissions, as behind real block
        pillars, instead of an invented intermediate height. Off by default: it matches a 4×-finer
        truth better but the bench's default 2×-finer truth slightly worse (see the module report).
        """
        net = self.net
        n_layers = len(net.layers)
        planes = [0.0] + [layer.dz_m for layer in net.layers] + [net.detector_dz_m]
        if start_step == 0:
            field = net.input_field(self.images)
        else:
            field = self._cache[start_step]
        for step in range(start_step, 2 * n_layers + 1):
            if cache is not None:
                cache.append(field)
            i = step // 2
            if step % 2 == 0:
                field = net.propagators[i](field, planes[i + 1] - planes[i])
            else:
                field = field * self._layer_transmission(i)
        return field.real ** 2 + field.imag ** 2

    def cache_fields(self) -> torch.Tensor:
        """Compute the output once, remembering the field entering every step; returns the maps."""
        cache: list = []
        with torch.no_grad():
            intensity = self.output_intensity(cache)
        self._cache = cache
        return self._blur(intensity)

    def maps_from(self, start_step: int) -> torch.Tensor:
        return self._blur(self.output_intensity(start_step=start_step))

    def _layer_transmission(self, i: int) -> torch.Tensor:
        net, layer = self.net, self.net.layers[i]
        if self.plate_supersample > 1:
            return self._supersampled_transmission(i)
        if not self.resample_transmission:
            return layer.transmission(net.wavelength_m, net.cfg.pitch_m, net.oversample, net.index_scale)
        h = self._heights[i]
        t = layer.material.transmission(h, net.wavelength_m, net.index_scale)
        ri = torch.stack([t.real, t.imag])
        # Outside the plate: free space (transmission 1 relative to air).
        ri = resample_pose(ri - self._free, net.pitch_m, layer.dx_m, layer.dy_m, layer.rotation_rad) + self._free
        return torch.complex(ri[0], ri[1])

    def _supersampled_transmission(self, i: int) -> torch.Tensor:
        """The displaced plate rendered as square pillars on an s×-finer grid, its complex transmission
        averaged back over each twin pixel (the field a twin pixel passes on is the area mean of what the
        printed blocks transmit there). Costs one s×-finer resampling per plate, no finer propagation."""
        net, layer, s = self.net, self.net.layers[i], self.plate_supersample
        h = self._fine_heights[i]
        if not layer.pose_is_zero():
            h = resample_pose(h, net.pitch_m / s, layer.dx_m, layer.dy_m, layer.rotation_rad)
        t = layer.material.transmission(h, net.wavelength_m, net.index_scale)
        ri = F.avg_pool2d(torch.stack([t.real, t.imag])[None], s)[0]
        return torch.complex(ri[0], ri[1])

    def _blur(self, intensity: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            r = self.kernel.shape[-1] // 2
            intensity = F.conv2d(intensity[:, None], self.kernel, padding=r)[:, 0]
        return intensity

    def intensity_maps(self) -> torch.Tensor:
        """(K, n, n) twin intensities seen through the aperture (relative units)."""
        return self._blur(self.output_intensity())

    def samples(self, maps: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Modelled (unscaled) readings at each scan's points, float64."""
        maps = self.intensity_maps() if maps is None else maps
        out = []
        for k in range(len(self.scans)):
            gx = (self.x[k] + self.detector_dx_m) / self._half_width_m
            gy = (self.y[k] + self.detector_dy_m) / self._half_width_m
            grid = torch.stack([gx, gy], -1).to(maps.dtype)[None, None]
            v = F.grid_sample(maps[k][None, None], grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)[0, 0, 0]
            out.append(v.double())
        return out

    def residuals(self, maps: torch.Tensor | None = None, return_linear: bool = False):
        """Weighted residuals of all points (the loss is their sum of squares), scale and background
        per object solved in closed form."""
        res, linear = [], []
        for k, f in enumerate(self.samples(maps)):
            f = self._apply(self._smooth[k], f)
            t = self._targets[k]
            fm, tm = f.mean(), t.mean()
            fc, tc = f - fm, t - tm
            a = (fc * tc).sum() / ((fc * fc).sum() + 1e-300)
            b = tm - a * fm
            res.append((t - a * f - b) * self._weights[k])
            linear.append((float(a), float(b)))
        r = torch.cat(res)
        return (r, linear) if return_linear else r

    def loss(self) -> torch.Tensor:
        r = self.residuals()
        return (r * r).sum()
