"""gsvc: a scalable image codec built on layered 2D Gaussian splatting (P-GSVC)."""
__version__ = "0.1.0"
