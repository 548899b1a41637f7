"""Models: the 3D morphable model and its camera, the generator, its discriminators, the
ArcFace identity encoder and the 3DMM coefficient regressor."""
from .generator import Generator, GeneratorConfig, GeneratorOutput

__all__ = ["Generator", "GeneratorConfig", "GeneratorOutput"]
