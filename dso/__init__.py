"""DSO: Direct Simulation Optimization of image-to-3D generators for physical stability."""

__version__ = "0.1.0"

import os as _os

# Nothing in DSO may download weights at run time: model folders are local paths.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
