"""Procedural prompt objects and a CPU renderer for the embedded default generator.

- ``procedural``: ``sample_object(seed, resolution)`` -> ``ProceduralObject`` (occupancy + part labels),
  built by the family builders in ``families/`` from the solids in ``primitives`` and posed
  (leaned to a target support margin) by ``voxelize``.
- ``stability``: centre of mass, support polygon, support margin, tipping angle of any grid.
- ``validity``: the checks every object passes (one piece, grounded, off the side faces).
- ``camera`` / ``raster`` / ``render``: cameras, a numpy z-buffer rasteriser, RGBA renders.
- ``prompts``: the held-out prompt set and single training prompts; ``gallery``: docs/shapes.png.
"""
