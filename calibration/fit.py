"""Fit the twin's as-built parameters to measured output-plane scans (DESIGN.md section 7).

Strategy (``fit_twin``):

1. *Detector-offset search*: with the design poses, the output maps are computed once and the detector
   offset is searched on a grid (±``offset_search_m``): a pure resampling, no propagation. This removes
   the one parameter that moves the whole pattern rigidly.
2. *Levenberg–Marquardt* on all parameters at once (Gauss–Newton with Marquardt damping; the Jacobian by
   forward differences in the internal units of ``params.py``; step length capped so one iteration
   cannot jump out of a basin). Scale and background are solved in closed form inside every residual
   evaluation (``model.ScanModel``). Optionally first at a coarse resolution (``coarse_sigma_m``: measured
   and modelled samples both smoothed) then sharp.
3. *Stack-mode line searches*: moving every plate and the detector together relative to the object
   (a common shift, or a shift ∝ z = a tilted stack) is nearly degenerate under plane-wave light, and
   LM stalls in false minima along these four directions; a 1-D search along each (evaluations only)
   followed by LM again, up to three rounds. This is what found the minimum in the benchmark cases
   that converged (``FitResult.strategy`` says which step did).
4. *Multi-start*, when the loss is still far above what the data allow: restart from the best point
   with the lateral parameters of each layer perturbed (seeded), keep the best.

Deterministic for a given seed, unless ``time_budget_s`` runs out (then the iteration count depends on
the machine's speed).

Uncertainties come from the Jacobian at the optimum (``uncertainty.py``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from model.network import D2NN

from .data import ObjectScan
from .model import ScanModel
from .params import ParamSpace
from .uncertainty import Uncertainty, estimate_uncertainty

ProgressCallback = Callable[[str, int, int, float], None]
"""progress(stage, step, total_steps, loss)."""


@dataclass
class FitOptions:
    aperture_m: float = 0.5e-3            # detector aperture side (an instrument property, not fitted)
    fit_index_scale: bool = False
    fit_object_offset: bool | None = None  # None: only when the twin has a non-uniform source beam
    offset_search_m: float = 2e-3
    offset_search_step_m: float = 0.2e-3
    coarse_sigma_m: float = 0.0           # 0 = no coarse stage
    coarse_iterations: int = 4
    max_iterations: int = 25
    shift_search_m: float = 0.8e-3         # search range along the stack-shift mode
    shift_search_step_m: float = 0.1e-3
    tilt_search_rad: float = 8e-3         # search range along the stack-tilt mode (_stack_mode)
    tilt_search_step_rad: float = 1e-3
    first_iterations: int = 12            # LM iterations before the first mode search
    hop_rounds: int = 12                  # stack-mode basin-hopping rounds (0 = off)
    hop_iterations: int = 6               # LM iterations from each hop candidate
    hop_shift_m: float = 0.25e-3          # hop size along the stack-shift modes
    hop_tilt_rad: float = 1.5e-3          # hop size along the stack-tilt modes
    hop_dz_m: float = 0.3e-3              # hop size along the common axial mode (object distance)
    line_searches: int = 0                # rounds of the older 1-D stack-mode line searches (0 = off)
    restarts: int = 3                     # multi-start tries when the loss stays high
    restart_loss: float = 0.25            # restart when the loss after LM exceeds this
    restart_spread: float = 1.5           # lateral perturbation of a restart, in pitches
    max_step: float = 1.5                 # LM step cap per parameter (internal units)
    fd_step: float = 0.02                 # forward-difference step (internal units)
    dz_bound_m: float = 2e-3              # |axial offset| of every plane is kept within this
    time_budget_s: float | None = None    # wall-clock safety net; None = fixed iteration counts only
                                          # (deterministic). When set and reached, results depend on speed.
    resample_transmission: bool = False
    plate_supersample: int = 2            # render displaced plates s× finer (model.py); 1 = as D2NN does
    seed: int = 0


@dataclass
class FitResult:
    names: list[str]
    values_si: dict[str, float]
    uncertainty: Uncertainty
    loss_before: float
    loss_after: float
    strategy: str
    wall_time_s: float
    n_points: int
    n_objects: int
    scales: list[tuple[float, float]]   # per object (scale a, background b): reading = a·model + b
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    iterations: int = 0        # LM iterations (one Jacobian each)
    evaluations: int = 0       # model evaluations (forwards, partial ones for Jacobian columns included)


class _Problem:
    def __init__(self, data_model: ScanModel, space: ParamSpace, dz_bound_m: float = math.inf):
        self.model, self.space = data_model, space
        self.evaluations = 0
        self.jacobians = 0
        self.iterations = 0
        bound = torch.full((len(space),), math.inf, dtype=torch.float64)
        for j, prm in enumerate(space.params):
            if prm.name.endswith("dz_m"):
                bound[j] = dz_bound_m / prm.unit
        self.bound = bound

    def clamp(self, p: torch.Tensor) -> torch.Tensor:
        """Project onto the box of allowed values (the axial offsets are bounded)."""
        return torch.maximum(torch.minimum(p, self.bound), -self.bound)

    @torch.no_grad()
    def residuals(self, p: torch.Tensor) -> torch.Tensor:
        self.space.set(p)
        self.evaluations += 1
        return self.model.residuals()

    @torch.no_grad()
    def jacobian(self, p: torch.Tensor, r0: torch.Tensor, step: float) -> torch.Tensor:
        """Forward differences; each column recomputes only the steps its parameter acts on."""
        self.jacobians += 1
        self.space.set(p)
        maps0 = self.model.cache_fields()
        cols = []
        for j, name in enumerate(self.space.names):
            q = p.clone()
            q[j] += step
            self.space.set(q)
            first = self.space.first_step(name)
            maps = maps0 if first < 0 else self.model.maps_from(first)
            cols.append((self.model.residuals(maps) - r0) / step)
            self.evaluations += 1
        self.space.set(p)
        return torch.stack(cols, 1)


def _levenberg_marquardt(problem: _Problem, p0: torch.Tensor, iterations: int, opts: FitOptions,
                         deadline: float, stage: str, progress: ProgressCallback | None,
                         history: list[dict]) -> tuple[torch.Tensor, float]:
    p = p0.clone()
    r = problem.residuals(p)
    loss = float(r @ r)
    lam = 1e-2
    stalls = 0
    for it in range(iterations):
        if deadline is not None and time.monotonic() > deadline:
            break
        problem.iterations += 1
        J = problem.jacobian(p, r, opts.fd_step)
        g = J.T @ r
        A = J.T @ J
        d = torch.diag(A).clamp(min=1e-9 * float(torch.diag(A).max()))
        improved = False
        for _ in range(8):
            step = -torch.linalg.solve(A + lam * torch.diag(d), g)
            big = float(step.abs().max())
            if big > opts.max_step:
                step = step * (opts.max_step / big)
            step = problem.clamp(p + step) - p
            r_new = problem.residuals(p + step)
            loss_new = float(r_new @ r_new)
            if loss_new < loss:
                rel = (loss - loss_new) / max(loss, 1e-300)
                p, r, loss = p + step, r_new, loss_new
                lam = max(lam / 3, 1e-6)
                improved = True
                break
            lam *= 4
        history.append({"stage": stage, "iteration": it, "loss": loss, "lambda": lam})
        if progress:
            progress(stage, it + 1, iterations, loss)
        if not improved or rel < 1e-4:
            stalls += 1
            if stalls >= 2 or not improved and lam > 1e6:
                break
        else:
            stalls = 0
    problem.space.set(p)
    return p, loss


@torch.no_grad()
def _search_detector_offset(model: ScanModel, space: ParamSpace, p: torch.Tensor, opts: FitOptions) -> torch.Tensor:
    """Grid search of the detector offset on maps computed once (design poses)."""
    space.set(p)
    maps = model.intensity_maps()
    steps = np.arange(-opts.offset_search_m, opts.offset_search_m + 1e-12, opts.offset_search_step_m)
    best = (math.inf, 0.0, 0.0)
    for ox in steps:
        for oy in steps:
            model.detector_dx_m.fill_(ox)
            model.detector_dy_m.fill_(oy)
            r = model.residuals(maps)
            loss = float(r @ r)
            if loss < best[0]:
                best = (loss, ox, oy)
    model.detector_dx_m.fill_(best[1])
    model.detector_dy_m.fill_(best[2])
    return space.get()


@torch.no_grad()
def _stack_mode(space: ParamSpace, axis: str, kind: str) -> torch.Tensor:
    """Direction in parameter space that moves the whole stack relative to the object: ``kind`` "shift"
    (every plate and the detector by the same 1 mm) or "tilt" (by θ·z per unit θ in rad, z from the
    object — what a tilted source does). Under a plane wave these are nearly degenerate with the
    object's own offset and the source tilt, and the loss has false minima along them."""
    net = space.net
    z = np.cumsum(net.cfg.distances_m) if kind == "tilt" else np.full(len(net.cfg.distances_m), 1e-3)
    v = torch.zeros(len(space.names), dtype=torch.float64)
    for j, (name, prm) in enumerate(zip(space.names, space.params)):
        if name.startswith("layer") and name.endswith(f".d{axis}_m"):
            v[j] = z[int(name[5:].split(".")[0])] / prm.unit
        elif name == f"detector_d{axis}_m":
            v[j] = z[-1] / prm.unit
    return v


def _search_modes(problem: _Problem, p: torch.Tensor, loss: float, opts: FitOptions) -> tuple[torch.Tensor, float, bool]:
    """Line searches (evaluations only) along the stack shift and tilt modes, x and y."""
    moved = False
    grids = {"shift": np.arange(-opts.shift_search_m, opts.shift_search_m + 1e-12, opts.shift_search_step_m) / 1e-3,
             "tilt": np.arange(-opts.tilt_search_rad, opts.tilt_search_rad + 1e-12, opts.tilt_search_step_rad)}
    for kind in ("shift", "tilt"):
        for axis in ("x", "y"):
            v = _stack_mode(problem.space, axis, kind)
            for th in grids[kind]:
                if th == 0:
                    continue
                r = problem.residuals(p + th * v)
                l_new = float(r @ r)
                if l_new < loss * (1 - 1e-3):
                    best_p, loss, moved = p + th * v, l_new, True
            if moved:
                p = best_p
    problem.space.set(p)
    return p, loss, moved


def _common_dz_mode(space: ParamSpace) -> torch.Tensor:
    """Every plane (plates and output plane) 1 mm further from the object."""
    v = torch.zeros(len(space.names), dtype=torch.float64)
    for j, (name, prm) in enumerate(zip(space.names, space.params)):
        if name.endswith("dz_m"):
            v[j] = 1e-3 / prm.unit
    return v


def _hop_stack_modes(problem: _Problem, p: torch.Tensor, loss: float, opts: FitOptions, deadline, stage: str,
                     progress: ProgressCallback | None, history: list[dict]) -> tuple[torch.Tensor, float, str | None]:
    """One round of basin hopping along the near-degenerate stack modes (the pose of the whole stack
    relative to the object: common shift and tilt, x and y, and the object distance). The loss has
    false minima about 0.2 mm apart along them that LM cannot leave (nor can a 1-D line search: the
    other parameters have to follow); so from a point ±hop along a mode, a short LM run; the first end
    point that beats the current one is taken (then the caller starts the next round from it).
    Fixed counts and order: deterministic."""
    space = problem.space
    candidates = [(f"{kind} {axis}", _stack_mode(space, axis, kind) * size)
                  for kind, size in (("shift", opts.hop_shift_m / 1e-3), ("tilt", opts.hop_tilt_rad))
                  for axis in ("x", "y")]
    if opts.hop_dz_m > 0:
        candidates.append(("object distance", _common_dz_mode(space) * (opts.hop_dz_m / 1e-3)))
    for label, v in candidates:
        for sign in (-1, 1):
            if deadline is not None and time.monotonic() > deadline:
                break
            q, lq = _levenberg_marquardt(problem, problem.clamp(p + sign * v), opts.hop_iterations, opts, deadline,
                                         f"{stage} {label} {'+' if sign > 0 else '-'}", None, history)
            if lq < loss * (1 - 1e-3):
                if progress:
                    progress(stage, 1, 1, lq)
                space.set(q)
                return q, lq, f"{label} {'+' if sign > 0 else '-'}"
    space.set(p)
    return p, loss, None


def fit_twin(net: D2NN, scans: list[ObjectScan], options: FitOptions | None = None,
             progress: ProgressCallback | None = None) -> FitResult:
    """Fit ``net``'s as-built parameters (in place) to ``scans``; returns values, uncertainties, losses.

    ``net`` should carry the design poses (zeros) or a starting guess. Only the measurements are read.
    """
    opts = options or FitOptions()
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    start = time.monotonic()
    deadline = None if opts.time_budget_s is None else start + opts.time_budget_s

    def out_of_time(margin: float = 0.0) -> bool:
        return deadline is not None and time.monotonic() > deadline - margin
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    data_model = ScanModel(net, scans, opts.aperture_m, resample_transmission=opts.resample_transmission,
                           plate_supersample=opts.plate_supersample)
    fit_object = opts.fit_object_offset
    if fit_object is None:
        # Under a plane wave, moving object, plates and detector together changes nothing: the object
        # offset is then a gauge freedom, fixed by defining the optical axis through the object's centre.
        fit_object = net._illumination is not None
    space = ParamSpace(net, data_model, opts.fit_index_scale, fit_object)
    problem = _Problem(data_model, space, opts.dz_bound_m)
    history: list[dict] = []

    p0 = space.get()
    r0 = problem.residuals(p0)
    loss_before = float(r0 @ r0)
    p = _search_detector_offset(data_model, space, p0, opts)
    strategy = ["detector-offset grid search"]
    if progress:
        progress("offset search", 1, 1, float((problem.residuals(p) ** 2).sum()))

    if opts.coarse_sigma_m > 0:
        data_model.set_smoothing(opts.coarse_sigma_m)
        p, _ = _levenberg_marquardt(problem, p, opts.coarse_iterations, opts, deadline, "coarse", progress, history)
        data_model.set_smoothing(0.0)
        strategy.append(f"coarse LM (σ = {opts.coarse_sigma_m * 1e3:g} mm)")
    p, loss = _levenberg_marquardt(problem, p, opts.first_iterations, opts, deadline, "fine", progress, history)
    strategy.append(f"Levenberg-Marquardt: loss {loss:.4g}")
    found_by = "Levenberg-Marquardt from the design poses"
    for k in range(opts.line_searches):
        if out_of_time(5):
            break
        p, loss, moved = _search_modes(problem, p, loss, opts)
        if moved:
            found_by = "stack shift/tilt mode search + Levenberg-Marquardt"
        p, loss = _levenberg_marquardt(problem, p, opts.max_iterations, opts, deadline,
                                       f"after mode search {k + 1}", progress, history)
        strategy.append(f"mode search {k + 1} ({'moved' if moved else 'no better point'}) + LM: loss {loss:.4g}")
        if not moved and k > 0:
            break
    for k in range(opts.hop_rounds):
        if out_of_time(5):
            break
        p, loss, how = _hop_stack_modes(problem, p, loss, opts, deadline, f"hop {k + 1}", progress, history)
        strategy.append(f"stack-mode hop {k + 1}: {how or 'no better basin'} (loss {loss:.4g})")
        if how is None:
            break
        found_by = f"stack-mode basin hopping (round {k + 1}: {how})"
    p, loss_polish = _levenberg_marquardt(problem, p, opts.max_iterations, opts, deadline, "polish", progress,
                                          history)
    strategy.append(f"LM polish: loss {loss_polish:.4g}")
    loss = loss_polish

    lateral = [i for i, n in enumerate(space.names) if n.startswith("layer") and (".dx" in n or ".dy" in n)]
    for k in range(opts.restarts):
        if loss <= opts.restart_loss or out_of_time(5):
            break
        q = p.clone()
        q[lateral] += torch.as_tensor(rng.uniform(-opts.restart_spread, opts.restart_spread, len(lateral)))
        q, loss_q = _levenberg_marquardt(problem, q, opts.max_iterations, opts, deadline, f"restart {k + 1}",
                                         progress, history)
        strategy.append(f"restart {k + 1}: loss {loss_q:.4g}")
        if loss_q < loss:
            p, loss, found_by = q, loss_q, f"multi-start (restart {k + 1})"
    space.set(p)
    r, linear = data_model.residuals(return_linear=True)
    unc = estimate_uncertainty(problem, space, p, r, opts.fd_step)
    space.set(p)
    strategy.append(f"minimum found by: {found_by}")
    return FitResult(names=space.names, values_si=space.si(p), uncertainty=unc, loss_before=loss_before,
                     loss_after=float(r @ r), strategy="; ".join(strategy),
                     wall_time_s=time.monotonic() - start, n_points=data_model.n_points,
                     n_objects=len(scans), scales=linear, history=history,
                     iterations=problem.iterations, evaluations=problem.evaluations)
