"""Known answers on ../shared/data: dlib identity decisions, self-retrieval, and the 3DMM roll of a rotated face."""
import os

import numpy as np
import pytest

from wscswap_fast.eval import metrics

cv2 = pytest.importorskip("cv2")
pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def analyzer():
    from wscswap_fast.eval.embeddings import DlibEmbedder
    from wscswap_fast.eval.faces import FaceAnalyzer

    return FaceAnalyzer([DlibEmbedder()])


@pytest.fixture(scope="module")
def photos(analyzer):
    from ..backends import SHARED_DATA

    folder = os.path.join(SHARED_DATA, "faces", "photos")
    if not os.path.isdir(folder):
        pytest.skip("../shared/data is not beside this checkout")
    out = {}
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        img = cv2.imread(os.path.join(folder, name))
        out[name] = (img, analyzer.analyse(img))
    return out


def test_an_image_against_itself(photos, analyzer):
    img, face = photos["obama.jpg"]
    again = analyzer.analyse(img.copy())       # a second, independent computation
    a, b = face.embeddings["dlib"], again.embeddings["dlib"]
    assert a.shape == (128,)
    assert metrics.cosine_similarity(a, b).item() == pytest.approx(1.0, abs=1e-9)
    assert metrics.euclidean_distance(a, b).item() == pytest.approx(0.0, abs=1e-6)
    gallery = np.stack([photos[n][1].embeddings["dlib"] for n in ("obama.jpg", "obama2.jpg", "biden.jpg")])
    for metric in ("euclidean", "cosine"):
        acc = metrics.retrieval_accuracy(gallery, gallery, [0, 1, 2], metric=metric)
        assert acc["top1"] == 1.0 and acc["top5"] == 1.0


def test_obama_same_identity_biden_different(photos):
    e = {n: f.embeddings["dlib"] for n, (_, f) in photos.items()}
    same = metrics.euclidean_distance(e["obama.jpg"], e["obama2.jpg"]).item()
    other = metrics.euclidean_distance(e["obama.jpg"], e["biden.jpg"]).item()
    # ../shared/data/README.md: 0.38 and 0.84
    assert same == pytest.approx(0.38, abs=0.03) and other == pytest.approx(0.84, abs=0.03)
    assert metrics.same_identity(same).item() and not metrics.same_identity(other).item()
    assert (metrics.cosine_similarity(e["obama.jpg"], e["obama2.jpg"]).item()
            > metrics.cosine_similarity(e["obama.jpg"], e["biden.jpg"]).item())


@pytest.mark.parametrize("degrees", [20.0, -20.0])
def test_in_plane_rotation_gives_that_roll_error(photos, analyzer, shared_data, degrees):
    from wscswap_fast.eval.faces import fit_faces
    from wscswap_fast.models.morphable import load_sfm

    img, face = photos["obama.jpg"]
    x0, y0, x1, y1 = face.box
    m = cv2.getRotationMatrix2D(((x0 + x1) / 2, (y0 + y1) / 2), degrees, 1.0)
    rotated = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    turned = analyzer.analyse(rotated)
    assert turned is not None, "dlib should still find a face turned by 20 degrees"
    fits = fit_faces(load_sfm(os.path.join(shared_data, "morphable", "sfm")), [face.landmarks68, turned.landmarks68])
    diff = metrics.angle_differences(fits.angles[1:], fits.angles[:1])[0]
    # OpenCV's positive angle turns the image anticlockwise: the subject's right eye (image left)
    # goes down, which is positive roll in models/camera.py.
    assert abs(diff[2].item() - degrees) < 3.0
    assert abs(metrics.pose_error(fits.angles[1:], fits.angles[:1]).item() - abs(degrees)) < 3.5


def test_analyse_at_falls_back_to_the_box(photos, analyzer):
    img, face = photos["biden.jpg"]
    blank = np.full_like(img, 128)
    assert analyzer.analyse(blank) is None
    rec = analyzer.analyse_at(blank, face.box)
    assert not rec.detected and rec.landmarks68.shape == (68, 2) and rec.embeddings["dlib"].shape == (128,)
    rec = analyzer.analyse_at(img, face.box)
    assert rec.detected and np.allclose(rec.landmarks68, face.landmarks68)
