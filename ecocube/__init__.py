"""ecocube: analysis-ready, gap-filled, ML-predicted data cubes, tile by tile."""

__version__ = "0.1.0"
