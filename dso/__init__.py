"""DSO: Direct Simulation Optimization of image-to-3D generators for physical stability."""

__version__ = "0.1.0"
