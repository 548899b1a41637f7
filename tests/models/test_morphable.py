"""MorphableModel and its loaders: the real Surrey Face Model, a synthetic BFM_model_front.mat
of Deep3DFaceRecon's exact layout, the neutral npz, and clear errors for bad files."""
import os

import numpy as np
import pytest
import torch

from wscswap_fast.models import morphable
from wscswap_fast.models.morphable import MorphableModel, load, load_bfm_front, load_morphable_model, load_sfm

SFM_CONTOUR = list(range(0, 8)) + list(range(9, 17))


@pytest.fixture(scope="module")
def sfm_dir():
    pytest.importorskip("eos")
    from ..backends import SHARED_DATA

    path = os.path.join(SHARED_DATA, "morphable", "sfm")
    if not os.path.isdir(path):
        pytest.skip("../shared/data/morphable/sfm is not beside this checkout")
    return path


@pytest.fixture(scope="module")
def sfm(sfm_dir):
    return load_sfm(sfm_dir)


def test_sfm_contents(sfm, sfm_dir):
    import eos

    assert (sfm.num_vertices, sfm.num_id, sfm.num_exp, sfm.triangles.shape[0]) == (3448, 63, 6, 6736)
    assert sfm.albedo_mean is None and sfm.units_per_metre == 1000.0
    shape = eos.morphablemodel.load_model(os.path.join(sfm_dir, "sfm_shape_3448.bin")).get_shape_model()
    np.testing.assert_array_equal(sfm.mean_shape.reshape(-1).numpy(), shape.get_mean())
    np.testing.assert_array_equal(sfm.id_basis.reshape(-1, 63).numpy(), shape.get_rescaled_pca_basis())
    blendshapes = eos.morphablemodel.load_blendshapes(os.path.join(sfm_dir, "expression_blendshapes_3448.bin"))
    np.testing.assert_array_equal(sfm.exp_basis[:, :, 3].reshape(-1).numpy(), blendshapes[3].deformation)
    # ibug_to_sfm.txt: 9 = 33 (chin), 31 = 114 (nose tip), 68 = 404; no vertex for the contour, 61, 65.
    assert sfm.landmark_indices[8] == 33 and sfm.landmark_indices[30] == 114 and sfm.landmark_indices[67] == 404
    unmapped = sorted(SFM_CONTOUR + [60, 64])
    assert torch.nonzero(sfm.landmark_weights == 0).reshape(-1).tolist() == unmapped
    assert int(sfm.landmark_weights.sum()) == 50
    assert sfm.contour_right.tolist()[:3] == [380, 373, 356] and sfm.contour_left.tolist()[-1] == 465
    assert len(sfm.contour_right) == len(sfm.contour_left) == 17
    # z points out of the face: the nose tip is within 0.1 mm of the frontmost point.
    assert sfm.mean_shape[114, 2] > sfm.mean_shape[:, 2].max() - 0.1


def test_landmark_rows_equal_indexed_full_mesh(sfm):
    model = sfm.to(dtype=torch.float64)
    assert model.landmark_indices.dtype == model.triangles.dtype == torch.int64
    g = torch.Generator().manual_seed(torch.seed())
    id_coeff = torch.randn(3, model.num_id, generator=g, dtype=torch.float64)
    exp_coeff = torch.rand(3, model.num_exp, generator=g, dtype=torch.float64)
    full = model.vertices(id_coeff, exp_coeff)
    torch.testing.assert_close(model.landmarks(id_coeff, exp_coeff), full[:, model.landmark_indices], rtol=1e-12, atol=1e-10)
    manual = model.mean_shape + (model.id_basis.reshape(-1, model.num_id) @ id_coeff[1]).reshape(-1, 3) \
        + (model.exp_basis.reshape(-1, model.num_exp) @ exp_coeff[1]).reshape(-1, 3)
    torch.testing.assert_close(full[1], manual)


def _write_bfm_front(path, v=97, f=150, seed=0, drop=(), **replace):
    """A small file with BFM_model_front.mat's keys and layouts: (1, 3V) means, (3V, K) bases with
    80/64/80 components, 1-based (F, 3) tri, (1, 68) keypoints and (V, 8) point_buf, as doubles."""
    import scipy.io

    rng = np.random.default_rng(seed)
    data = {
        "meanshape": rng.normal(size=(1, 3 * v)) + 0.5,
        "idBase": rng.normal(size=(3 * v, 80)) * 0.01,
        "exBase": rng.normal(size=(3 * v, 64)) * 0.01,
        "meantex": rng.uniform(50, 200, size=(1, 3 * v)),
        "texBase": rng.normal(size=(3 * v, 80)),
        "tri": rng.integers(1, v + 1, size=(f, 3)).astype(np.float64),
        "keypoints": rng.integers(1, v + 1, size=(1, 68)).astype(np.float64),
        "point_buf": rng.integers(1, f + 1, size=(v, 8)).astype(np.float64),
    }
    for key in drop:
        del data[key]
    data.update(replace)
    scipy.io.savemat(path, data)
    return data


def test_bfm_front_layout(tmp_path):
    pytest.importorskip("scipy")
    path = tmp_path / "BFM_model_front.mat"
    data = _write_bfm_front(path)
    model = load_bfm_front(path)
    assert (model.num_vertices, model.num_id, model.num_exp, model.num_albedo) == (97, 80, 64, 80)
    mean = data["meanshape"].reshape(-1, 3)
    np.testing.assert_allclose(model.mean_shape.numpy(), mean - mean.mean(0), rtol=1e-5, atol=1e-6)
    # Rows are x0, y0, z0, x1, ...: vertex 5's y of identity component 7 is idBase[16, 7].
    assert model.id_basis[5, 1, 7] == np.float32(data["idBase"][16, 7])
    assert model.exp_basis[40, 2, 63] == np.float32(data["exBase"][122, 63])
    np.testing.assert_allclose(model.albedo_mean.numpy(), data["meantex"].reshape(-1, 3) / 255, rtol=1e-6)
    np.testing.assert_allclose(model.albedo_basis[:, :, 11].numpy(), data["texBase"][:, 11].reshape(-1, 3) / 255, rtol=1e-6)
    np.testing.assert_array_equal(model.triangles.numpy(), data["tri"].astype(np.int64) - 1)
    np.testing.assert_array_equal(model.landmark_indices.numpy(), data["keypoints"].reshape(-1).astype(np.int64) - 1)
    assert bool((model.landmark_weights == 1).all()) and model.contour_right.numel() == 0
    assert model.units_per_metre == 10.0
    not_centred = load_bfm_front(path, recenter=False)
    np.testing.assert_allclose(not_centred.mean_shape.numpy(), mean, rtol=1e-6)


def test_bfm_without_texture_has_no_albedo(tmp_path):
    pytest.importorskip("scipy")
    _write_bfm_front(tmp_path / "m.mat", drop=("meantex", "texBase"))
    model = load_bfm_front(tmp_path / "m.mat")
    assert model.albedo_mean is None and model.albedo_basis is None
    with pytest.raises(ValueError, match="no albedo"):
        model.albedo(torch.zeros(1, 80))


def test_neutral_round_trip(tmp_path, sfm):
    pytest.importorskip("scipy")
    _write_bfm_front(tmp_path / "m.mat")
    for model in (sfm, load_bfm_front(tmp_path / "m.mat")):
        path = tmp_path / f"{model.name}.npz"
        model.save(path)
        back = load(path)
        for name in MorphableModel._FLOATS + MorphableModel._INDICES + ("landmark_mean", "landmark_id_basis"):
            a, b = getattr(model, name), getattr(back, name)
            assert (a is None and b is None) or torch.equal(a, b), name
        assert (back.units_per_metre, back.name) == (model.units_per_metre, model.name)


def test_load_morphable_model_by_path(tmp_path, sfm_dir):
    pytest.importorskip("scipy")
    _write_bfm_front(tmp_path / "m.mat")
    assert load_morphable_model(sfm_dir).name == "sfm_3448"
    assert load_morphable_model(os.path.join(sfm_dir, "sfm_shape_3448.bin")).num_exp == 6
    load_morphable_model(tmp_path / "m.mat").save(tmp_path / "m.npz")
    assert load_morphable_model(tmp_path / "m.npz").num_id == 80
    (tmp_path / "m.obj").write_text("v 0 0 0\n")
    with pytest.raises(ValueError, match="unknown morphable model format"):
        load_morphable_model(tmp_path / "m.obj")


def test_missing_files_name_the_path(tmp_path, sfm_dir):
    for call in (lambda: load_bfm_front(tmp_path / "nope.mat"), lambda: load(tmp_path / "nope.npz"),
                 lambda: load_morphable_model(tmp_path / "nope.npz"), lambda: load_sfm(tmp_path)):
        with pytest.raises(FileNotFoundError, match=str(tmp_path)):
            call()
    with pytest.raises(FileNotFoundError, match="expressions file not found.*nope.bin"):
        load_sfm(sfm_dir, expressions=tmp_path / "nope.bin")


def _copy_sfm(sfm_dir, dest, **contents):
    import shutil

    for name in morphable.SFM_FILES.values():
        shutil.copy(os.path.join(sfm_dir, name), dest / name)
    for key, text in contents.items():
        target = dest / morphable.SFM_FILES[key]
        target.write_bytes(text if isinstance(text, bytes) else text.encode())
    return dest


@pytest.mark.parametrize("key, text, words", [
    ("shape", os.urandom(2000), ["sfm_shape_3448.bin", "not an eos morphable model"]),
    ("shape", b"", ["sfm_shape_3448.bin", "not an eos morphable model"]),
    ("expressions", b"\x01\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00", ["expression_blendshapes_3448.bin", "blendshapes"]),
    ("landmarks", "[landmark_mappings]\n1 = \n", ["ibug_to_sfm.txt", "landmark_mappings"]),
    ("landmarks", "[landmark_mappings]\n70 = 3\n", ["ibug landmark 70", "1..68"]),
    ("landmarks", "[other]\n1 = 3\n", ["ibug_to_sfm.txt", "landmark_mappings"]),
    ("contours", '{"model_contour": {"right_contour": [1, 2]}}', ["sfm_model_contours.json", "left_contour"]),
    ("contours", '{"model_contour": {"right_contour": [1, 2], "left_contour": [99999]}}', ["left_contour", "0..3447"]),
])
def test_malformed_sfm_files(tmp_path, sfm_dir, key, text, words):
    folder = _copy_sfm(sfm_dir, tmp_path, **{key: text})
    with pytest.raises(ValueError) as info:
        load_sfm(folder)
    for word in words:
        assert word in str(info.value)


def test_malformed_bfm_files(tmp_path):
    pytest.importorskip("scipy")
    (tmp_path / "junk.mat").write_bytes(os.urandom(500))
    with pytest.raises(ValueError, match="junk.mat is not a MATLAB"):
        load_bfm_front(tmp_path / "junk.mat")
    _write_bfm_front(tmp_path / "nokey.mat", drop=("exBase",))
    with pytest.raises(ValueError, match=r"lacks the keys \['exBase'\]"):
        load_bfm_front(tmp_path / "nokey.mat")
    _write_bfm_front(tmp_path / "badbase.mat", idBase=np.zeros((30, 80)))
    with pytest.raises(ValueError, match=r"idBase must have shape \(291, K\)"):
        load_bfm_front(tmp_path / "badbase.mat")
    _write_bfm_front(tmp_path / "zerobased.mat", tri=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="tri must have shape .* 1-based"):
        load_bfm_front(tmp_path / "zerobased.mat")
    _write_bfm_front(tmp_path / "fewkeys.mat", keypoints=np.ones((1, 5)))
    with pytest.raises(ValueError, match="keypoints must hold 68"):
        load_bfm_front(tmp_path / "fewkeys.mat")


def test_malformed_npz(tmp_path):
    (tmp_path / "junk.npz").write_bytes(os.urandom(300))
    with pytest.raises(ValueError, match="junk.npz is not a morphable model"):
        load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a morphable model saved by wscswap_fast"):
        load(tmp_path / "other.npz")
    np.savez(tmp_path / "partial.npz", format=np.array(morphable.NEUTRAL_FORMAT), mean_shape=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="lacks the entries"):
        load(tmp_path / "partial.npz")


def _tiny(**change):
    g = torch.Generator().manual_seed(3)
    args = dict(mean_shape=torch.randn(10, 3, generator=g), id_basis=torch.randn(10, 3, 4, generator=g),
                exp_basis=torch.randn(10, 3, 2, generator=g), triangles=torch.tensor([[0, 1, 2], [2, 3, 9]]),
                landmark_indices=torch.arange(68) % 10)
    args.update(change)
    return MorphableModel(**args)


@pytest.mark.parametrize("change, words", [
    (dict(id_basis=torch.zeros(9, 3, 4)), ["id_basis", "(10, 3, K)", "(9, 3, 4)"]),
    (dict(exp_basis=torch.zeros(10, 3, 2, dtype=torch.float64)), ["exp_basis", "dtype"]),
    (dict(triangles=torch.tensor([[0, 1, 10]])), ["triangles", "0..9"]),
    (dict(landmark_indices=torch.arange(67)), ["landmark_indices", "(68,)"]),
    (dict(landmark_indices=torch.arange(68)), ["landmark_indices", "0..9"]),
    (dict(landmark_weights=-torch.ones(68)), ["landmark_weights", "non-negative"]),
    (dict(albedo_mean=torch.zeros(10, 3)), ["albedo_mean and albedo_basis"]),
    (dict(contour_right=torch.tensor([3, 11])), ["contour_right", "0..9"]),
])
def test_model_validation(change, words):
    with pytest.raises(ValueError) as info:
        _tiny(**change)
    for word in words:
        assert word in str(info.value)


def test_coefficient_shapes_are_checked():
    model = _tiny()
    with pytest.raises(ValueError, match=r"id_coeff must be a tensor of shape \(N, 4\)"):
        model.vertices(torch.zeros(2, 5), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="same N"):
        model.landmarks(torch.zeros(2, 4), torch.zeros(3, 2))
