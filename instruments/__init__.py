"""Instrument drivers: THz source, lock-in detector, APT stages, object changer.

Talk to hardware (or the virtual bench's emulators) through pyvisa / pyserial / pymeasure; know nothing
of D2NNs, and import nothing from the other project packages.
"""

from .apt_stage import (COUNTS_PER_MM_NRT100_BSC, COUNTS_PER_MM_Z8, AptStage, StageInfo,
                        StageStatus, StatusBits)
from .errors import (InstrumentError, LockInError, LockInOverload, ObjectChangeAborted,
                     ReferenceUnlocked, SoftLimitError, SourceLimitError, StageError, StageTimeout)
from .lockin import (DetectorCalibration, LIAStatus, LockIn, LockInReading, PowerLaw, RTheta,
                     SquareLaw, TableCalibration, XY, settling_time_s)
from .object_changer import ManualObjectChanger, ObjectChanger
from .thz_source import Keysight8257D, THzSource

__all__ = [
    "AptStage", "StageInfo", "StageStatus", "StatusBits", "COUNTS_PER_MM_Z8", "COUNTS_PER_MM_NRT100_BSC",
    "InstrumentError", "SourceLimitError", "SoftLimitError", "StageError", "StageTimeout",
    "LockInError", "LockInOverload", "ReferenceUnlocked", "ObjectChangeAborted",
    "LockIn", "LIAStatus", "RTheta", "XY", "LockInReading", "DetectorCalibration", "SquareLaw",
    "PowerLaw", "TableCalibration", "settling_time_s",
    "ObjectChanger", "ManualObjectChanger",
    "Keysight8257D", "THzSource",
]
