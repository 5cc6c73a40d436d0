"""Fit the twin's physical parameters to measured output-plane scans (DESIGN.md section 7).

Public API: ``calibrate`` (runs → outputs), ``fit_twin`` / ``FitOptions`` / ``FitResult``,
``load_scans``, ``result_to_dict``, ``corrections``, ``write_as_built_twin``, ``write_outputs``.
"""
from .calibrate import calibrate
from .data import CalibrationDataError, ObjectScan, load_scans
from .fit import FitOptions, FitResult, fit_twin
from .report import corrections, result_to_dict, write_as_built_twin, write_outputs

__all__ = ["calibrate", "CalibrationDataError", "ObjectScan", "load_scans", "FitOptions", "FitResult",
           "fit_twin", "corrections", "result_to_dict", "write_as_built_twin", "write_outputs"]
