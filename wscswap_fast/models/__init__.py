"""Models: the 3D morphable model and its camera, the generator, its discriminators, the
ArcFace identity encoder and the 3DMM coefficient regressor.

The names below load their module on first use (PEP 562), so importing the package stays cheap
and `python -m wscswap_fast.models.generator` runs without a double import."""
from .._lazy import lazy_exports

_EXPORTS = {
    "IdentityAdversary": "discriminator", "MultiScaleDiscriminator": "discriminator",
    "Generator": "generator", "GeneratorConfig": "generator", "GeneratorOutput": "generator",
    "IResNet": "iresnet", "IdentityEncoder": "iresnet", "iresnet18": "iresnet", "iresnet34": "iresnet",
    "iresnet50": "iresnet", "iresnet100": "iresnet", "load_identity_encoder": "iresnet",
    "CoefficientRegressor": "regressor", "load_coefficient_regressor": "regressor",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
