"""pipeline.detect on ../shared/data photos: the counts its README lists, landmarks, embeddings, errors."""
import os

import cv2
import numpy as np
import pytest

from wscswap_fast.pipeline import detect as D

# ../shared/data/README.md: dlib's HOG detector finds these many faces.
EXPECTED = {"obama.jpg": 1, "obama2.jpg": 1, "biden.jpg": 1, "two_people.jpg": 2, "simswap_multi_people.jpg": 3}


@pytest.fixture(scope="module")
def detector():
    return D.DlibDetector()


def _photo(shared_data, name):
    return cv2.imread(os.path.join(shared_data, "faces", "photos", name))


def test_model_files_found_without_pkg_resources():
    for name in D.MODEL_FILES:
        assert os.path.isfile(D.dlib_model_path(name))
    with pytest.raises(ValueError, match="name must be one of"):
        D.dlib_model_path("nope.dat")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detection_counts_match_readme(shared_data, detector, name):
    img = _photo(shared_data, name)
    faces = detector.detect(img)
    assert len(faces) == EXPECTED[name]
    h, w = img.shape[:2]
    for f in faces:
        x0, y0, x1, y1 = f.box
        assert -5 <= x0 < x1 <= w + 5 and -5 <= y0 < y1 <= h + 5
        assert f.landmarks68.shape == (68, 2) and f.landmarks5.shape == (5, 2)
        # landmarks lie in (about) the box, eyes above the mouth, image-left eye left of the other
        cx, cy = f.landmarks68.mean(axis=0)
        assert x0 - 10 < cx < x1 + 10 and y0 - 10 < cy < y1 + 10
        lm5 = f.landmarks5
        assert lm5[0, 0] < lm5[1, 0] and lm5[3, 0] < lm5[4, 0]
        assert lm5[:2, 1].mean() < lm5[2, 1] < lm5[3:, 1].mean()


def test_downscaled_detection_maps_boxes_back(shared_data):
    img = _photo(shared_data, "obama.jpg")  # 910x1137
    full = D.DlibDetector(upsample=0, max_side=0).detect(img)[0]
    small = D.DlibDetector(upsample=0, max_side=400).detect(img)[0]
    # same face, box within a few detector cells (the HOG cell is 8 px of the small image = ~23 px here)
    assert np.abs(np.subtract(full.box, small.box)).max() < 40
    # landmarks are fitted on the full image in both cases
    assert np.median(np.linalg.norm(full.landmarks68 - small.landmarks68, axis=1)) < 6


def test_five_from_68_definition():
    lm = np.random.default_rng(0).uniform(0, 100, (68, 2))
    five = D.five_from_68(lm)
    np.testing.assert_allclose(five[0], lm[36:42].mean(0))
    np.testing.assert_allclose(five[1], lm[42:48].mean(0))
    np.testing.assert_allclose(five[2:], lm[[30, 48, 54]])


def test_five_points_from_dlib5_predictor_near_68_derivation(shared_data):
    img = _photo(shared_data, "obama2.jpg")
    det68 = D.DlibDetector()
    det5 = D.DlibDetector(landmarks=False)
    f68, f5 = det68.detect(img)[0], det5.detect(img)[0]
    assert f5.landmarks68 is None
    iod = np.linalg.norm(f68.landmarks5[0] - f68.landmarks5[1])
    assert np.linalg.norm(f68.landmarks5 - f5.landmarks5, axis=1).max() < 0.25 * iod


def test_embedding_distances_match_readme(shared_data, detector):
    def emb(name):
        img = _photo(shared_data, name)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return detector.landmarker.descriptor(rgb, detector.detect(img)[0].box)

    o1, o2, b = emb("obama.jpg"), emb("obama2.jpg"), emb("biden.jpg")
    assert o1.shape == (128,)
    assert np.linalg.norm(o1 - o2) < 0.5  # README: 0.38
    assert np.linalg.norm(o1 - b) > 0.7  # README: 0.84


def test_tracking_refit_in_previous_box(shared_data, detector):
    img = _photo(shared_data, "biden.jpg")
    f = detector.detect(img)[0]
    box = D.box_from_landmarks(f.landmarks68)
    lm = detector.landmarks68(img, box)
    assert np.median(np.linalg.norm(lm - f.landmarks68, axis=1)) < 4


def test_no_face_and_bad_inputs(detector):
    assert detector.detect(np.full((120, 160, 3), 128, np.uint8)) == []
    with pytest.raises(TypeError, match="image must be a numpy"):
        detector.detect([[1, 2, 3]])
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H,W,3\)"):
        detector.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="upsample"):
        D.DlibDetector(upsample=-1)
    with pytest.raises(ValueError, match="max_side"):
        D.DlibDetector(max_side=-3)


def test_select_faces(shared_data, detector):
    faces = detector.detect(_photo(shared_data, "two_people.jpg"))
    assert D.select_faces(faces, "all") == faces
    (big,) = D.select_faces(faces, "largest")
    assert big.area == max(f.area for f in faces)
    assert D.select_faces([], "largest") == []
    with pytest.raises(ValueError, match="mode"):
        D.select_faces(faces, "biggest")


def test_onnx_detector_missing_file_and_bad_arguments(tmp_path):
    missing = tmp_path / "yunet.onnx"
    with pytest.raises(FileNotFoundError, match="yunet.onnx"):
        D.OnnxDetector(str(missing))
    with pytest.raises(TypeError, match="model_path"):
        D.OnnxDetector(3)
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match="garbage.onnx"):
        D.OnnxDetector(str(bad), landmarks68=False)
    with pytest.raises(ValueError, match="garbage.onnx"):
        D.OnnxDetector(str(bad), kind="scrfd", landmarks68=False)
    with pytest.raises(ValueError, match="kind"):
        D.OnnxDetector(str(bad), kind="retina")


# ---- SCRFD plumbing with a tiny ONNX model written here (no model file ships offline) ----
def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, value):
    """One protobuf field: ints as varints, bytes/str as length-delimited."""
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _value_info(name, shape):
    dims = b"".join(_field(1, _field(1, d)) for d in shape)  # Dimension.dim_value
    tensor_type = _field(1, 1) + _field(2, dims)  # elem_type FLOAT, shape
    return _field(1, name) + _field(2, _field(1, tensor_type))


def _tensor(name, array):
    array = np.ascontiguousarray(array, dtype="<f4")
    return b"".join(_field(1, d) for d in array.shape) + _field(2, 1) + _field(8, name) + _field(9, array.tobytes())


def _constant_model(input_shape, outputs):
    """An ONNX model whose outputs are the given constants (Identity of initializers)."""
    graph = b""
    for name, arr in outputs:
        graph += _field(1, _field(1, name + "_c") + _field(2, name) + _field(3, "id_" + name) + _field(4, "Identity"))
    graph += _field(2, "tiny_scrfd")
    for name, arr in outputs:
        graph += _field(5, _tensor(name + "_c", arr))
    graph += _field(11, _value_info("input.1", input_shape))
    for name, arr in outputs:
        graph += _field(12, _value_info(name, arr.shape))
    return _field(1, 7) + _field(2, "wscswap-test") + _field(7, graph) + _field(8, _field(1, "") + _field(2, 13))


def test_scrfd_decoding_through_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    size = 64  # input; strides 8, 16, 32 -> grids 8, 4, 2 with 2 anchors per cell
    outs = {}
    for s in D.SCRFD_STRIDES:
        n = (size // s) ** 2 * 2
        outs[f"score_{s}"] = np.full((n, 1), 0.01)
        outs[f"bbox_{s}"] = np.ones((n, 4))
        outs[f"kps_{s}"] = np.zeros((n, 10))
    # one face on stride 16, cell (x=2, y=1), first anchor: centre (32, 16) in input pixels
    j = (1 * 4 + 2) * 2
    outs["score_16"][j] = 0.9
    outs["bbox_16"][j] = [1.0, 0.5, 1.5, 2.0]  # left, top, right, bottom distances in strides
    outs["kps_16"][j] = [-0.5, -0.25, 0.5, -0.25, 0.0, 0.25, -0.25, 0.75, 0.25, 0.75]
    order = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in D.SCRFD_STRIDES]
    path = tmp_path / "tiny_scrfd.onnx"
    path.write_bytes(_constant_model((1, 3, size, size), [(k, outs[k]) for k in order]))
    det = D.OnnxDetector(str(path), score_threshold=0.5, landmarks68=False, input_size=size)
    assert det.kind == "scrfd"  # picked by the file name
    # a 128x96 image: letterboxed into 64x64 at scale 0.5, so image coordinates are input x 2
    faces = det.detect(np.zeros((96, 128, 3), np.uint8))
    assert len(faces) == 1
    f = faces[0]
    assert f.score == pytest.approx(0.9)
    np.testing.assert_allclose(f.box, np.array([32 - 16, 16 - 8, 32 + 24, 16 + 32]) * 2)
    kps = np.array([-0.5, -0.25, 0.5, -0.25, 0.0, 0.25, -0.25, 0.75, 0.25, 0.75]).reshape(5, 2) * 16 + [32, 16]
    np.testing.assert_allclose(f.landmarks5, kps * 2)
    assert f.landmarks68 is None
    # an output of the wrong size is an error naming what was expected
    bad = tmp_path / "bad_scrfd.onnx"
    outs["kps_8"] = np.zeros((7, 10))
    bad.write_bytes(_constant_model((1, 3, size, size), [(k, outs[k]) for k in order]))
    with pytest.raises(ValueError, match="stride 8"):
        D.OnnxDetector(str(bad), landmarks68=False, input_size=size).detect(np.zeros((64, 64, 3), np.uint8))


def test_yunet_through_opencv(tmp_path):
    """OpenCV's FaceDetectorYN on a tiny constant model with YuNet's outputs: cls/obj/bbox/kps per
    stride, one cell per location; box centre (cell + offset) * stride, size exp(.) * stride."""
    size = 64
    outs = {}
    for s in D.SCRFD_STRIDES:
        n = (size // s) ** 2
        outs[f"cls_{s}"], outs[f"obj_{s}"] = np.zeros((1, n, 1)), np.zeros((1, n, 1))
        outs[f"bbox_{s}"], outs[f"kps_{s}"] = np.zeros((1, n, 4)), np.zeros((1, n, 10))
    j = 1 * 4 + 2  # stride 16, cell (x=2, y=1)
    outs["cls_16"][0, j] = outs["obj_16"][0, j] = 0.9
    outs["bbox_16"][0, j] = [0.0, 0.0, np.log(2), np.log(3)]
    kps = np.array([-0.5, -0.25, 0.5, -0.25, 0.0, 0.25, -0.25, 0.75, 0.25, 0.75])
    outs["kps_16"][0, j] = kps
    order = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in D.SCRFD_STRIDES]
    path = tmp_path / "tiny_yunet.onnx"
    path.write_bytes(_constant_model((1, 3, size, size), [(k, outs[k]) for k in order]))
    det = D.OnnxDetector(str(path), landmarks68=False)
    assert det.kind == "yunet"
    faces = det.detect(np.zeros((size, size, 3), np.uint8))
    assert len(faces) == 1
    assert faces[0].score == pytest.approx(0.9, abs=1e-5)
    np.testing.assert_allclose(faces[0].box, [16, -8, 48, 40], atol=1e-4)
    np.testing.assert_allclose(faces[0].landmarks5, (kps.reshape(5, 2) + [2, 1]) * 16, atol=1e-4)
