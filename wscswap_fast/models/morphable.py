"""The 3D morphable model (3DMM): mean shape, identity and expression bases, optional albedo,
triangles, and the 68 ibug landmarks as vertex indices with per-landmark validity weights.

Loaders, all by path, each raising FileNotFoundError for a missing file and ValueError naming
the file and what is wrong for a malformed one:

- :func:`load_sfm`: the Surrey Face Model through eos-py (``sfm_shape_3448.bin``,
  ``expression_blendshapes_3448.bin``, ``ibug_to_sfm.txt``, ``sfm_model_contours.json``);
- :func:`load_bfm_front`: Deep3DFaceRecon's ``BFM_model_front.mat``;
- :func:`load` / :meth:`MorphableModel.save`: our neutral ``.npz``;
- :func:`load_morphable_model`: any of the three, chosen by the path.

Contour landmarks. The Surrey model maps no vertex to the jaw contour (ibug 1-8 and 10-17): the
outline of a face is wherever its silhouette happens to be, which depends on the pose. This
model gives those landmarks weight 0 (they never enter a loss through the fixed landmark rows)
and keeps the candidate contour vertices of each side in ``contour_right`` / ``contour_left``;
:func:`wscswap_fast.models.landmark_fitting.fit_landmarks` picks, per sample and per pose, the
candidate whose projection lies nearest to each detected contour landmark, as eos does, on the
side(s) the head has not turned away from. ibug 61 and 65 (inner mouth corners) have no SFM vertex either: weight 0.
BFM_model_front's ``keypoints`` map all 68 to fixed vertices (weight 1), as Deep3DFaceRecon uses
them.
"""
import json
import os

import numpy as np
import torch

NUM_LANDMARKS = 68
# ibug-68, 0-based: the jaw contour of each side, from the top (ear) down to next to the chin.
CONTOUR_LANDMARKS_RIGHT = tuple(range(0, 8))
CONTOUR_LANDMARKS_LEFT = tuple(range(9, 17))
NEUTRAL_FORMAT = "wscswap_fast.MorphableModel/1"


class MorphableModel:
    """A linear face model: ``shape = mean_shape + id_basis @ id_coeff + exp_basis @ exp_coeff``.

    Tensors (CPU, float32 unless converted with :meth:`to`):
        mean_shape (V, 3); id_basis (V, 3, K_id); exp_basis (V, 3, K_exp);
        albedo_mean (V, 3) and albedo_basis (V, 3, K_tex), or None (colours in [0, 1]);
        triangles (F, 3) int64 in the file's vertex order (the Surrey model's wind counter-clockwise
        seen from outside);
        landmark_indices (68,) int64, ibug-68 order (a landmark the model does not map has
        weight 0 and index 0); landmark_weights (68,);
        landmark_mean (68, 3), landmark_id_basis (68, 3, K_id), landmark_exp_basis
        (68, 3, K_exp): the landmark rows, gathered once here so that a landmark loss never
        forms the full mesh;
        contour_right, contour_left (C,) int64: candidate vertices of the jaw contour (empty when
        the model maps the contour to fixed vertices).

    ``units_per_metre`` says the unit of the shape (1000 for millimetres, 10 for decimetres), so
    that a camera distance can be given in metres.
    """

    def __init__(self, mean_shape, id_basis, exp_basis, triangles, landmark_indices, landmark_weights=None, *,
                 albedo_mean=None, albedo_basis=None, contour_right=None, contour_left=None,
                 units_per_metre: float = 1.0, name: str = ""):
        def floats(t):
            t = torch.as_tensor(t)
            return t if t.is_floating_point() else t.to(torch.float32)

        self.mean_shape = floats(mean_shape)
        self.id_basis = floats(id_basis)
        self.exp_basis = floats(exp_basis)
        self.triangles = torch.as_tensor(triangles).to(torch.int64)
        self.landmark_indices = torch.as_tensor(landmark_indices).to(torch.int64)
        if landmark_weights is None:
            landmark_weights = torch.ones(self.landmark_indices.shape, dtype=self.mean_shape.dtype)
        self.landmark_weights = floats(landmark_weights).to(self.mean_shape.dtype)
        self.albedo_mean = None if albedo_mean is None else floats(albedo_mean)
        self.albedo_basis = None if albedo_basis is None else floats(albedo_basis)
        empty = torch.zeros(0, dtype=torch.int64)
        self.contour_right = empty if contour_right is None else torch.as_tensor(contour_right).to(torch.int64)
        self.contour_left = empty if contour_left is None else torch.as_tensor(contour_left).to(torch.int64)
        self.units_per_metre = float(units_per_metre)
        self.name = name
        self._validate()
        self._gather_landmarks()

    def _validate(self):
        v = self.mean_shape.shape[0] if self.mean_shape.dim() == 2 else -1

        def need(ok, what, t):
            if not ok:
                got = f"shape {tuple(t.shape)}, dtype {t.dtype}" if isinstance(t, torch.Tensor) else repr(t)
                raise ValueError(f"MorphableModel {what}, got {got}")

        need(self.mean_shape.dim() == 2 and self.mean_shape.shape[1] == 3 and v > 0,
             "mean_shape must have shape (V, 3) with V > 0", self.mean_shape)
        for name in ("id_basis", "exp_basis"):
            t = getattr(self, name)
            need(t.dim() == 3 and t.shape[:2] == (v, 3), f"{name} must have shape ({v}, 3, K) (V from mean_shape)", t)
            need(t.dtype == self.mean_shape.dtype, f"{name} must have mean_shape's dtype {self.mean_shape.dtype}", t)
        if (self.albedo_mean is None) != (self.albedo_basis is None):
            raise ValueError("MorphableModel needs both albedo_mean and albedo_basis, or neither")
        if self.albedo_mean is not None:
            need(self.albedo_mean.shape == (v, 3), f"albedo_mean must have shape ({v}, 3)", self.albedo_mean)
            need(self.albedo_basis.dim() == 3 and self.albedo_basis.shape[:2] == (v, 3),
                 f"albedo_basis must have shape ({v}, 3, K_tex)", self.albedo_basis)
        need(self.triangles.dim() == 2 and self.triangles.shape[1] == 3, "triangles must have shape (F, 3)", self.triangles)
        if self.triangles.numel():
            need(int(self.triangles.min()) >= 0 and int(self.triangles.max()) < v,
                 f"triangles must index vertices 0..{v - 1} (range {int(self.triangles.min())}..{int(self.triangles.max())})",
                 self.triangles)
        need(self.landmark_indices.shape == (NUM_LANDMARKS,), "landmark_indices must have shape (68,)", self.landmark_indices)
        need(self.landmark_weights.shape == (NUM_LANDMARKS,), "landmark_weights must have shape (68,)", self.landmark_weights)
        need(bool(((self.landmark_indices >= 0) & (self.landmark_indices < v)).all()),
             f"landmark_indices must index vertices 0..{v - 1}", self.landmark_indices)
        need(bool((self.landmark_weights >= 0).all()) and bool(torch.isfinite(self.landmark_weights).all()),
             "landmark_weights must be finite and non-negative", self.landmark_weights)
        for name in ("contour_right", "contour_left"):
            t = getattr(self, name)
            need(t.dim() == 1 and bool(((t >= 0) & (t < v)).all()), f"{name} must be a 1-D index of vertices 0..{v - 1}", t)

    def _gather_landmarks(self):
        idx = self.landmark_indices
        self.landmark_mean = self.mean_shape[idx].contiguous()
        self.landmark_id_basis = self.id_basis[idx].contiguous()
        self.landmark_exp_basis = self.exp_basis[idx].contiguous()

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_id(self) -> int:
        return self.id_basis.shape[2]

    @property
    def num_exp(self) -> int:
        return self.exp_basis.shape[2]

    @property
    def num_albedo(self) -> int:
        return 0 if self.albedo_basis is None else self.albedo_basis.shape[2]

    _FLOATS = ("mean_shape", "id_basis", "exp_basis", "landmark_weights", "albedo_mean", "albedo_basis")
    _INDICES = ("triangles", "landmark_indices", "contour_right", "contour_left")

    def to(self, device=None, dtype=None) -> "MorphableModel":
        """A copy on another device and/or with another float dtype (the indices stay int64)."""
        def move(name):
            t = getattr(self, name)
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if name in self._FLOATS else None)

        return MorphableModel(
            move("mean_shape"), move("id_basis"), move("exp_basis"), move("triangles"), move("landmark_indices"),
            move("landmark_weights"), albedo_mean=move("albedo_mean"), albedo_basis=move("albedo_basis"),
            contour_right=move("contour_right"), contour_left=move("contour_left"),
            units_per_metre=self.units_per_metre, name=self.name)

    def _check_coeffs(self, id_coeff, exp_coeff):
        for name, t, k in (("id_coeff", id_coeff, self.num_id), ("exp_coeff", exp_coeff, self.num_exp)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != k:
                got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else f"a {type(t).__name__}"
                raise ValueError(f"{name} must be a tensor of shape (N, {k}) for this model, got {got}")
        if id_coeff.shape[0] != exp_coeff.shape[0]:
            raise ValueError(f"id_coeff and exp_coeff must have the same N, got {id_coeff.shape[0]} and {exp_coeff.shape[0]}")

    def vertices(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
        """The full mesh (N, V, 3) of coefficients (N, K_id) and (N, K_exp)."""
        self._check_coeffs(id_coeff, exp_coeff)
        return (self.mean_shape + torch.einsum("vck,nk->nvc", self.id_basis, id_coeff)
                + torch.einsum("vck,nk->nvc", self.exp_basis, exp_coeff))

    def landmarks(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
        """The 68 landmark vertices (N, 68, 3), from the gathered rows only."""
        self._check_coeffs(id_coeff, exp_coeff)
        return (self.landmark_mean + torch.einsum("lck,nk->nlc", self.landmark_id_basis, id_coeff)
                + torch.einsum("lck,nk->nlc", self.landmark_exp_basis, exp_coeff))

    def albedo(self, albedo_coeff: torch.Tensor) -> torch.Tensor:
        """Per-vertex colour (N, V, 3) in [0, 1] (before lighting) of coefficients (N, K_tex)."""
        if self.albedo_basis is None:
            raise ValueError(f"this morphable model ({self.name or 'unnamed'}) has no albedo model")
        if not isinstance(albedo_coeff, torch.Tensor) or albedo_coeff.dim() != 2 or albedo_coeff.shape[1] != self.num_albedo:
            raise ValueError(f"albedo_coeff must be a tensor of shape (N, {self.num_albedo}), got {getattr(albedo_coeff, 'shape', type(albedo_coeff))}")
        return self.albedo_mean + torch.einsum("vck,nk->nvc", self.albedo_basis, albedo_coeff)

    def save(self, path) -> None:
        """Write the neutral format: one ``.npz`` of plain arrays, readable without this package."""
        arrays = {"format": np.array(NEUTRAL_FORMAT), "units_per_metre": np.array(self.units_per_metre),
                  "name": np.array(self.name)}
        for name in self._FLOATS + self._INDICES:
            t = getattr(self, name)
            if t is not None:
                arrays[name] = t.detach().cpu().numpy()
        with open(path, "wb") as f:  # a file object: numpy would append .npz to a path without it
            np.savez(f, **arrays)

    def __repr__(self):
        albedo = f", K_tex={self.num_albedo}" if self.albedo_basis is not None else ""
        return (f"MorphableModel({self.name or 'unnamed'}: V={self.num_vertices}, F={self.triangles.shape[0]}, "
                f"K_id={self.num_id}, K_exp={self.num_exp}{albedo}, landmarks with weight > 0: "
                f"{int((self.landmark_weights > 0).sum())}/68, dtype={self.mean_shape.dtype})")


def _require_file(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def load(path) -> MorphableModel:
    """Read a model written by :meth:`MorphableModel.save`."""
    path = _require_file(path, "morphable model file")
    try:
        data = np.load(path, allow_pickle=False)
        files = set(data.files)
    except Exception as e:  # numpy raises several types for a file that is not an npz
        raise ValueError(f"{path} is not a morphable model .npz file ({type(e).__name__}: {e})") from None
    if "format" not in files or str(data["format"]) != NEUTRAL_FORMAT:
        raise ValueError(f"{path} is not a morphable model saved by wscswap_fast (no 'format' entry {NEUTRAL_FORMAT!r})")
    missing = [k for k in ("mean_shape", "id_basis", "exp_basis", "triangles", "landmark_indices", "landmark_weights")
               if k not in files]
    if missing:
        raise ValueError(f"{path} lacks the entries {missing}")
    get = {k: torch.from_numpy(np.array(data[k])) for k in files if k not in ("format", "name", "units_per_metre")}
    try:
        return MorphableModel(
            get["mean_shape"], get["id_basis"], get["exp_basis"], get["triangles"], get["landmark_indices"],
            get["landmark_weights"], albedo_mean=get.get("albedo_mean"), albedo_basis=get.get("albedo_basis"),
            contour_right=get.get("contour_right"), contour_left=get.get("contour_left"),
            units_per_metre=float(data["units_per_metre"]) if "units_per_metre" in files else 1.0,
            name=str(data["name"]) if "name" in files else "")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


SFM_FILES = {
    "shape": "sfm_shape_3448.bin",
    "expressions": "expression_blendshapes_3448.bin",
    "landmarks": "ibug_to_sfm.txt",
    "contours": "sfm_model_contours.json",
}


def load_sfm(directory=None, *, shape=None, expressions=None, landmarks=None, contours=None) -> MorphableModel:
    """The Surrey Face Model, read through eos-py (``pip install eos-py``).

    Pass the folder holding the four files of :data:`SFM_FILES`, or each path by keyword (a
    keyword wins over the folder). The identity basis is eos's rescaled PCA basis (coefficients
    in standard deviations); the expression basis holds the blendshapes (anger, disgust, fear,
    happiness, sadness, surprise), which eos fits as non-negative. Units: millimetres. No albedo.
    """
    paths = {}
    for key, given in (("shape", shape), ("expressions", expressions), ("landmarks", landmarks), ("contours", contours)):
        if given is None:
            if directory is None:
                raise ValueError(f"load_sfm needs a directory or the path of the {key} file")
            given = os.path.join(os.fspath(directory), SFM_FILES[key])
        paths[key] = _require_file(given, f"Surrey Face Model {key} file")
    try:
        import eos
    except ImportError as e:
        raise ImportError(f"loading the Surrey Face Model needs eos-py (pip install eos-py): {e}") from None

    try:
        shape_model = eos.morphablemodel.load_model(paths["shape"]).get_shape_model()
        mean = np.asarray(shape_model.get_mean(), dtype=np.float32)
        id_basis = np.asarray(shape_model.get_rescaled_pca_basis(), dtype=np.float32)
        triangles = np.asarray(shape_model.get_triangle_list(), dtype=np.int64)
    except Exception as e:  # eos raises RuntimeError or ValueError for a bad file
        raise ValueError(f"{paths['shape']} is not an eos morphable model file ({type(e).__name__}: {e})") from None
    v = mean.size // 3
    if mean.size % 3 or id_basis.shape[0] != mean.size or triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"{paths['shape']} holds inconsistent arrays: mean {mean.shape}, basis {id_basis.shape}, "
                         f"triangles {triangles.shape}")
    try:
        blendshapes = eos.morphablemodel.load_blendshapes(paths["expressions"])
        exp_basis = np.stack([np.asarray(b.deformation, dtype=np.float32) for b in blendshapes], axis=1)
    except Exception as e:
        raise ValueError(f"{paths['expressions']} is not an eos blendshapes file ({type(e).__name__}: {e})") from None
    if exp_basis.shape[0] != mean.size:
        raise ValueError(f"{paths['expressions']} has blendshapes of {exp_basis.shape[0] // 3} vertices, "
                         f"the shape model {v}")

    indices, weights = _read_ibug_mapping(paths["landmarks"], v)
    right, left = _read_contours(paths["contours"], v)
    return MorphableModel(
        torch.from_numpy(mean.reshape(v, 3)), torch.from_numpy(id_basis.reshape(v, 3, -1)),
        torch.from_numpy(exp_basis.reshape(v, 3, -1)), torch.from_numpy(triangles), indices, weights,
        contour_right=right, contour_left=left, units_per_metre=1000.0, name="sfm_3448")


def _read_ibug_mapping(path, num_vertices):
    """ibug_to_sfm.txt (TOML): [landmark_mappings] ibug number (1-based) = vertex index."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)["landmark_mappings"]
        pairs = [(int(k), int(v)) for k, v in table.items()]
    except Exception as e:
        raise ValueError(f"{path} is not a landmark mapping file with a [landmark_mappings] table of "
                         f"'ibug number = vertex index' ({type(e).__name__}: {e})") from None
    indices = torch.zeros(NUM_LANDMARKS, dtype=torch.int64)
    weights = torch.zeros(NUM_LANDMARKS, dtype=torch.float32)
    for ibug, vertex in pairs:
        if not (1 <= ibug <= NUM_LANDMARKS and 0 <= vertex < num_vertices):
            raise ValueError(f"{path} maps ibug landmark {ibug} to vertex {vertex}; expected 1..68 -> 0..{num_vertices - 1}")
        indices[ibug - 1] = vertex
        weights[ibug - 1] = 1.0
    return indices, weights


def _read_contours(path, num_vertices):
    """sfm_model_contours.json: {"model_contour": {"right_contour": [...], "left_contour": [...]}}."""
    try:
        with open(path) as f:
            contour = json.load(f)["model_contour"]
        right, left = (torch.tensor([int(i) for i in contour[k]], dtype=torch.int64) for k in ("right_contour", "left_contour"))
    except Exception as e:
        raise ValueError(f"{path} is not a model contour file with model_contour.right_contour/left_contour "
                         f"vertex lists ({type(e).__name__}: {e})") from None
    for name, t in (("right_contour", right), ("left_contour", left)):
        if t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= num_vertices:
            raise ValueError(f"{path}: {name} must list vertices 0..{num_vertices - 1}, got {t.tolist()}")
    return right, left


BFM_KEYS = ("meanshape", "idBase", "exBase", "tri", "keypoints")


def load_bfm_front(path, *, recenter: bool = True) -> MorphableModel:
    """Deep3DFaceRecon's ``BFM_model_front.mat`` (needs scipy).

    Keys: meanshape (1, 3V), idBase (3V, 80), exBase (3V, 64), tri (F, 3) and keypoints (68,),
    1-based as in MATLAB; meantex (1, 3V) and texBase (3V, 80), 0..255, become the albedo in
    [0, 1] when present; point_buf (per-vertex triangles for normals) is not needed: normals come
    from ``triangles``. ``recenter`` subtracts the centroid of the mean shape, as Deep3DFaceRecon
    does (its coefficients assume it). Units: decimetres. All 68 landmarks have weight 1.
    """
    path = _require_file(path, "BFM model file")
    try:
        import scipy.io
    except ImportError as e:
        raise ImportError(f"loading a .mat model needs scipy (pip install scipy): {e}") from None
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 files are HDF5
        raise ValueError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save it with -v7 ({e})") from None
    except Exception as e:
        raise ValueError(f"{path} is not a MATLAB .mat file ({type(e).__name__}: {e})") from None
    missing = [k for k in BFM_KEYS if k not in mat]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing} of BFM_model_front.mat (has {sorted(k for k in mat if not k.startswith('__'))})")

    def array(key, dtype):
        return np.asarray(mat[key]).astype(dtype)

    mean = array("meanshape", np.float32).reshape(-1)
    if mean.size == 0 or mean.size % 3:
        raise ValueError(f"{path}: meanshape must hold 3V values, got shape {mat['meanshape'].shape}")
    v = mean.size // 3
    bases = {}
    for key in ("idBase", "exBase") + (("texBase",) if "texBase" in mat else ()):
        b = array(key, np.float32)
        if b.ndim != 2 or b.shape[0] != 3 * v:
            raise ValueError(f"{path}: {key} must have shape ({3 * v}, K) for {v} vertices, got {b.shape}")
        bases[key] = b.reshape(v, 3, -1)
    mean = mean.reshape(v, 3)
    if recenter:
        mean = mean - mean.mean(axis=0, keepdims=True)
    tri = array("tri", np.int64)
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.size == 0 or tri.min() < 1 or tri.max() > v:
        raise ValueError(f"{path}: tri must have shape (F, 3) of 1-based vertex numbers 1..{v}, got shape {tri.shape}")
    keypoints = array("keypoints", np.int64).reshape(-1)
    if keypoints.shape != (NUM_LANDMARKS,) or keypoints.min() < 1 or keypoints.max() > v:
        raise ValueError(f"{path}: keypoints must hold 68 1-based vertex numbers 1..{v}, got shape {mat['keypoints'].shape}")
    albedo_mean = albedo_basis = None
    if "meantex" in mat and "texBase" in mat:
        tex = array("meantex", np.float32).reshape(-1)
        if tex.size != 3 * v:
            raise ValueError(f"{path}: meantex must hold {3 * v} values, got shape {mat['meantex'].shape}")
        albedo_mean = torch.from_numpy(tex.reshape(v, 3) / 255.0)
        albedo_basis = torch.from_numpy(bases["texBase"] / 255.0)
    return MorphableModel(
        torch.from_numpy(mean), torch.from_numpy(bases["idBase"]), torch.from_numpy(bases["exBase"]),
        torch.from_numpy(tri - 1), torch.from_numpy(keypoints - 1), albedo_mean=albedo_mean,
        albedo_basis=albedo_basis, units_per_metre=10.0, name="bfm_front")


def load_morphable_model(path) -> MorphableModel:
    """By path: a folder or ``.bin`` -> :func:`load_sfm` (the other files beside it), ``.mat`` ->
    :func:`load_bfm_front`, ``.npz`` -> :func:`load`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return load_sfm(path)
    if path.endswith(".bin"):
        return load_sfm(os.path.dirname(path) or ".", shape=path)
    if path.endswith(".mat"):
        return load_bfm_front(path)
    if path.endswith(".npz"):
        return load(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"morphable model file not found: {path}")
    raise ValueError(f"{path}: unknown morphable model format; expected a folder or .bin (Surrey Face Model), "
                     ".mat (BFM_model_front) or .npz (saved by wscswap_fast)")
