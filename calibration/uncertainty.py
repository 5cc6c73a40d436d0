"""Parameter uncertainties and identifiability from the Gauss–Newton curvature at the optimum.

Cov = s² (JᵀJ)⁻¹ with J the Jacobian of the weighted residuals and s² = RSS / (N − P) the residual
variance (so unmodelled structure inflates the errors, as it should). The inverse is taken through an
eigen-decomposition with tiny eigenvalues clipped, so a singular direction shows up as a huge σ rather
than a crash. Caveat: residuals of a mismatched model are correlated between neighbouring points, so
these σ are lower bounds on the real errors (benchmarks/calibration.py compares them with the truth).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# What a parameter's σ must stay under to be called identified (SI), and the measurement that helps.
THRESHOLDS = {"dx_m": 0.05e-3, "dy_m": 0.05e-3, "dz_m": 0.3e-3, "rotation_rad": math.radians(0.2),
              "object_dx_m": 0.1e-3, "object_dy_m": 0.1e-3, "detector_dx_m": 0.05e-3,
              "detector_dy_m": 0.05e-3, "detector_dz_m": 0.3e-3, "index_scale": 0.01}
ADVICE = {"dx_m": "add objects that light this plate's edges or widen the scan area",
          "dy_m": "add objects that light this plate's edges or widen the scan area",
          "rotation_rad": "add objects that light this plate's edges or widen the scan area",
          "dz_m": "scan a second output plane (move the detector along z) or add objects",
          "object_dx_m": "add off-centre objects", "object_dy_m": "add off-centre objects",
          "detector_dx_m": "widen the scan area", "detector_dy_m": "widen the scan area",
          "detector_dz_m": "scan a second output plane",
          "index_scale": "scan at a second frequency"}
MAX_CORRELATION = 0.99


@dataclass
class Uncertainty:
    sigma_si: dict[str, float]
    correlation: list[list[float]]
    identifiable: dict[str, bool]
    reasons: dict[str, str]           # why a parameter is flagged, and what would identify it
    residual_variance: float
    dof: int


def _kind(name: str) -> str:
    return name.split(".", 1)[1] if name.startswith("layer") else name


def covariance_from_jacobian(J: torch.Tensor, r: torch.Tensor, n_params: int) -> tuple[torch.Tensor, float, int]:
    dof = max(J.shape[0] - n_params, 1)
    s2 = float(r @ r) / dof
    A = J.T @ J
    w, V = torch.linalg.eigh(A)
    floor = max(float(w.max()), 1e-300) * 1e-12
    inv = (V / w.clamp(min=floor)) @ V.T
    return s2 * inv, s2, dof


def estimate_uncertainty(problem, space, p: torch.Tensor, r: torch.Tensor, step: float) -> Uncertainty:
    J = problem.jacobian(p, r, step)
    cov, s2, dof = covariance_from_jacobian(J, r, len(p))
    return uncertainty_from_covariance(space.names, space.units(), cov, s2, dof)


def uncertainty_from_covariance(names, units: torch.Tensor, cov: torch.Tensor, s2: float, dof: int) -> Uncertainty:
    sig = torch.sqrt(torch.diag(cov).clamp(min=0))
    corr = cov / (sig[:, None] * sig[None, :]).clamp(min=1e-300)
    sigma_si = {n: float(s * u) for n, s, u in zip(names, sig, units)}
    identifiable, reasons = {}, {}
    for i, n in enumerate(names):
        kind = _kind(n)
        why = []
        if sigma_si[n] > THRESHOLDS[kind]:
            why.append(f"σ = {sigma_si[n]:.3g} exceeds {THRESHOLDS[kind]:.3g}")
        partners = [(abs(float(corr[i, j])), names[j]) for j in range(len(names)) if j != i]
        c, partner = max(partners) if partners else (0.0, "")
        if c > MAX_CORRELATION:
            why.append(f"correlation {c:.3f} with {partner}")
        identifiable[n] = not why
        if why:
            reasons[n] = f"{n} not identifiable ({'; '.join(why)}): {ADVICE[kind]}"
    return Uncertainty(sigma_si, corr.tolist(), identifiable, reasons, s2, dof)
