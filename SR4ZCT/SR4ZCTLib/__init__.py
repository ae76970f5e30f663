"""SR4ZCT engine: self-supervised through-plane resolution enhancement for thick-slice CT.

No Slicer or Qt import anywhere in this package: the Slicer module and the ``sr4zct``
command line both drive it. See Shi, Pelt & Batenburg, MLMI 2023.
"""

import os
import sys

if sys.platform == "darwin":  # before torch loads: ops Apple's Metal (MPS) lacks run on the CPU (core/device.py)
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

from .errors import Cancelled, InputError
from .core.acquisition import Acquisition

__version__ = "0.2.0"

__all__ = ["Acquisition", "Cancelled", "InputError", "__version__"]
