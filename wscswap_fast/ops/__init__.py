"""The fused ops. Each takes ``backend=`` ('auto', 'cuda', 'triton', 'cpu', 'reference')."""
from ._backends import BACKENDS, BackendUnavailable, available
from .ain import ain
from .blend import blend
from .instance_norm_act import instance_norm_act
from .landmark_loss import landmark_loss, landmark_loss_for
from .paste_faces import paste_faces
from .photometric_loss import photometric_loss
from .rasterize import rasterize
from .winograd_conv2d import winograd_conv2d

__all__ = ["BACKENDS", "BackendUnavailable", "available", "ain", "blend", "instance_norm_act", "landmark_loss", "landmark_loss_for", "paste_faces", "photometric_loss", "rasterize", "winograd_conv2d"]
