"""Measurement procedures: plain descriptions of what to measure, executed by ``lab.runner``."""
from .beam_profile import BeamProfile
from .classify import Classify
from .raster_scan import RasterScan

PROCEDURES = {p.name: p for p in (RasterScan, BeamProfile, Classify)}

__all__ = ["PROCEDURES", "RasterScan", "BeamProfile", "Classify"]
