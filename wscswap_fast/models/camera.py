"""Camera of the 3D morphable model: Euler rotation, translation, perspective and scaled
orthographic projection. Batched over N; differentiable; any float dtype and device.

Coordinates. Model space: x to the subject's left (the viewer's right), y up, z out of the face
towards the camera. Image space: pixels, u to the right, v down (OpenCV, dlib), so both
projections flip y.

Rotation, Deep3DFaceRecon's convention: ``angles`` (N, 3) = (pitch, yaw, roll) in radians,
``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` with the right-handed matrices

    Rx = [[1, 0, 0], [0, c, -s], [0, s, c]]
    Ry = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    Rz = [[c, -s, 0], [s, c, 0], [0, 0, 1]]

and a vertex maps to ``v' = R v + t``. Signs, as seen in the image:

- yaw > 0: the head turns to the subject's left (the nose moves to the image's right; we see
  more of the subject's right cheek);
- pitch > 0: the head looks down (the nose moves down in the image);
- roll > 0: the head tilts to the subject's right (their right eye, on the image's left, moves
  down).

These are also the signs of eos's ``RenderingParameters.get_yaw_pitch_roll()`` (whose matrix
composes the same three rotations in another order, so the numbers differ slightly away from
frontal poses: compare rotation matrices, or decompose both with :func:`angles_from_rotation`).

Projections of camera-space points ``v'``:

- :func:`perspective`: the camera sits on the +z axis at ``camera_distance`` looking towards -z,
  as in Deep3DFaceRecon: ``depth = camera_distance - z'``, ``u = cx + focal * x' / depth``,
  ``v = cy - focal * y' / depth``. Deep3DFaceRecon's 224x224 crops use focal 1015, distance 10
  (decimetres) and centre 112 in a y-up image, which is ``cx = 112, cy = 111`` here
  (its landmarks are flipped with ``v = 223 - y``).
- :func:`orthographic`: scaled orthographic, ``u = cx + scale * x'``, ``v = cy - scale * y'``.
  eos's scaled orthographic camera (``ScaledOrthoProjectionParameters`` s, tx, ty with R) is
  ``translation = (tx, ty, 0)``, ``scale = s``, ``cx = 0``, ``cy = image height``.
"""
import torch


def _as_batch(name: str, t: torch.Tensor, last: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != last:
        got = f"shape {tuple(t.shape)}, dtype {t.dtype}" if isinstance(t, torch.Tensor) else f"a {type(t).__name__}"
        raise ValueError(f"{name} must be a tensor of shape (N, {last}), got {got}")
    return t


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3) (pitch, yaw, roll) in radians -> (N, 3, 3) ``Rz(roll) @ Ry(yaw) @ Rx(pitch)``."""
    _as_batch("angles", angles, 3)
    cos, sin = torch.cos(angles), torch.sin(angles)
    cx, cy, cz = cos.unbind(1)
    sx, sy, sz = sin.unbind(1)
    # The product written out: one small graph instead of two batched matmuls.
    rows = [
        cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
        sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
        -sy, cy * sx, cy * cx,
    ]
    return torch.stack(rows, dim=1).reshape(-1, 3, 3)


def angles_from_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rotation_matrix`: (N, 3, 3) -> (N, 3) (pitch, yaw, roll), yaw in
    [-pi/2, pi/2]. At yaw = +-pi/2 (gimbal lock) pitch and roll are not separable; roll is 0 there."""
    if not isinstance(rotation, torch.Tensor) or rotation.dim() != 3 or rotation.shape[1:] != (3, 3):
        raise ValueError(f"rotation must be a tensor of shape (N, 3, 3), got {getattr(rotation, 'shape', type(rotation))}")
    r = rotation
    yaw = torch.asin((-r[:, 2, 0]).clamp(-1.0, 1.0))
    cos_yaw = torch.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2)
    locked = cos_yaw < 1e-6
    pitch = torch.where(locked, torch.atan2(-r[:, 1, 2], r[:, 1, 1]), torch.atan2(r[:, 2, 1], r[:, 2, 2]))
    roll = torch.where(locked, torch.zeros_like(yaw), torch.atan2(r[:, 1, 0], r[:, 0, 0]))
    return torch.stack([pitch, yaw, roll], dim=1)


def transform(vertices: torch.Tensor, angles: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Model space -> camera space: ``R v + t`` for vertices (N, V, 3), angles (N, 3), translation (N, 3)."""
    _as_batch("angles", angles, 3)
    _as_batch("translation", translation, 3)
    if vertices.dim() != 3 or vertices.shape[2] != 3 or vertices.shape[0] != angles.shape[0]:
        raise ValueError(f"vertices must have shape (N, V, 3) with N = {angles.shape[0]} (angles' N), got {tuple(vertices.shape)}")
    return vertices @ rotation_matrix(angles).transpose(1, 2) + translation[:, None, :]


def perspective(points: torch.Tensor, focal, cx, cy, camera_distance) -> torch.Tensor:
    """Camera-space points (..., 3) -> pixels (..., 2), the pinhole camera at +z ``camera_distance``."""
    depth = camera_distance - points[..., 2]
    u = cx + focal * points[..., 0] / depth
    v = cy - focal * points[..., 1] / depth
    return torch.stack([u, v], dim=-1)


def orthographic(points: torch.Tensor, scale, cx, cy) -> torch.Tensor:
    """Camera-space points (N, V, 3) -> pixels (N, V, 2), scaled orthographic: ``(cx + s x, cy - s y)``.

    ``scale`` is a number or a tensor (N,) (one scale per sample)."""
    if isinstance(scale, torch.Tensor) and scale.dim() == 1:
        scale = scale[:, None]
    return torch.stack([cx + scale * points[..., 0], cy - scale * points[..., 1]], dim=-1)
