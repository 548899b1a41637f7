"""Models: the 3D morphable model and its camera, the generator, its discriminators, the
ArcFace identity encoder and the 3DMM coefficient regressor."""
from .discriminator import IdentityAdversary, MultiScaleDiscriminator
from .generator import Generator, GeneratorConfig, GeneratorOutput
from .iresnet import IdentityEncoder, IResNet, iresnet18, iresnet34, iresnet50, iresnet100, load_identity_encoder
from .regressor import CoefficientRegressor, load_coefficient_regressor

__all__ = ["CoefficientRegressor", "Generator", "GeneratorConfig", "GeneratorOutput", "IResNet", "IdentityAdversary",
           "IdentityEncoder", "MultiScaleDiscriminator", "iresnet18", "iresnet34", "iresnet50", "iresnet100",
           "load_coefficient_regressor", "load_identity_encoder"]
