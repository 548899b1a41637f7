"""Metric functions with known answers, and PSNR/SSIM against direct float64 implementations."""
import math

import numpy as np
import pytest
import torch

from wscswap_fast.eval import metrics


def test_cosine_and_distance_of_an_embedding_with_itself():
    e = torch.randn(4, 128, dtype=torch.float64)
    assert torch.allclose(metrics.cosine_similarity(e, e), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(metrics.euclidean_distance(e, e), torch.zeros(4, dtype=torch.float64))
    assert metrics.same_identity(metrics.euclidean_distance(e, e)).all()


def test_cosine_matrix_against_numpy():
    a, b = np.random.randn(3, 16), np.random.randn(5, 16)
    ref = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    assert np.allclose(metrics.cosine_matrix(a, b).numpy(), ref, atol=1e-12)
    assert np.allclose(metrics.distance_matrix(a, b).numpy(), np.linalg.norm(a[:, None] - b[None], axis=2), atol=1e-12)


def test_retrieval_of_sources_by_themselves_is_perfect():
    gallery = torch.randn(7, 32, dtype=torch.float64)
    labels = torch.arange(7)
    for metric in ("cosine", "euclidean"):
        assert metrics.retrieval_accuracy(gallery, gallery, labels, metric=metric) == {"top1": 1.0, "top5": 1.0}


def test_retrieval_ranks_and_ties():
    gallery = torch.eye(6, dtype=torch.float64)
    # query 0 is nearest gallery 0 (right); query 1 is exactly gallery 2 (its label, 1, ranks second);
    # query 2 lies equally near gallery 3 and 4 with label 4: the tie counts against it.
    queries = torch.tensor([[1.0, 0.1, 0, 0, 0, 0], [0, 0.5, 1.0, 0, 0, 0], [0, 0, 0, 1.0, 1.0, 0]], dtype=torch.float64)
    acc = metrics.retrieval_accuracy(queries, gallery, [0, 1, 4], ks=(1, 2, 5))
    assert acc == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(1.0), "top5": pytest.approx(1.0)}


def test_retrieval_rejects_bad_labels_and_metric():
    g = torch.randn(3, 4)
    with pytest.raises(ValueError, match="labels must index"):
        metrics.retrieval_accuracy(g, g, [0, 1, 3])
    with pytest.raises(ValueError, match="labels must be"):
        metrics.retrieval_accuracy(g, g, [0, 1])
    with pytest.raises(ValueError, match="metric must be"):
        metrics.retrieval_accuracy(g, g, [0, 1, 2], metric="l1")
    with pytest.raises(ValueError, match="gallery must have 4 columns"):
        metrics.retrieval_accuracy(g, torch.randn(3, 5), [0, 1, 2])


def test_identity_consistency_of_identical_results_is_one():
    e = torch.randn(1, 128, dtype=torch.float64).expand(5, -1)
    mean, std = metrics.identity_consistency(e)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-7)


def test_identity_consistency_known_value_and_errors():
    # three unit vectors: pairwise cosines 0, 0, 1/sqrt(2)
    e = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 1.0]], dtype=torch.float64)
    mean, std = metrics.identity_consistency(e)
    pairs = np.array([0.0, 0.0, 1 / math.sqrt(2)])
    assert mean == pytest.approx(pairs.mean()) and std == pytest.approx(pairs.std())
    with pytest.raises(ValueError, match="at least 2"):
        metrics.identity_consistency(e[:1])
    with pytest.raises(ValueError, match="all-zero"):
        metrics.identity_consistency(torch.zeros(2, 3))


def test_pose_error_wraps_and_measures_degrees():
    a = torch.deg2rad(torch.tensor([[10.0, 20.0, 179.0]], dtype=torch.float64))
    b = torch.deg2rad(torch.tensor([[7.0, 24.0, -179.0]], dtype=torch.float64))
    diff = metrics.angle_differences(a, b)
    assert torch.allclose(diff, torch.tensor([[3.0, -4.0, -2.0]], dtype=torch.float64), atol=1e-9)
    assert metrics.pose_error(a, b).item() == pytest.approx(math.sqrt(29))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        metrics.pose_error(torch.zeros(2, 4), torch.zeros(2, 4))


def test_coefficient_error_and_shape_checks():
    assert metrics.coefficient_error([[3.0, 4.0]], [[0.0, 0.0]]).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="same number of rows"):
        metrics.coefficient_error(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.cosine_similarity(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2))
    with pytest.raises(TypeError, match="a must be an array"):
        metrics.cosine_similarity("abc", torch.ones(1, 2))


def psnr_direct(x: np.ndarray, y: np.ndarray) -> float:
    mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)
    return 10 * math.log10(1.0 / mse)


def ssim_direct(x: np.ndarray, y: np.ndarray, size=11, sigma=1.5) -> float:
    """Wang et al.'s SSIM written out window by window in float64 (C, H, W) images in [0, 1]."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                px, py = x[c, i:i + size, j:j + size], y[c, i:i + size, j:j + size]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_and_ssim_of_identical_images():
    x = torch.rand(2, 3, 24, 20)
    assert torch.isinf(metrics.psnr(x, x)).all()
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))


def test_psnr_and_ssim_against_direct_float64():
    rng = np.random.default_rng()
    x = rng.random((3, 23, 19))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    assert metrics.psnr(torch.from_numpy(x).float(), torch.from_numpy(y).float()).item() == pytest.approx(psnr_direct(x, y), rel=1e-5)
    got = metrics.ssim(torch.from_numpy(x), torch.from_numpy(y)).item()
    ref = ssim_direct(x, y)
    assert abs(got - ref) / abs(ref) < 1e-10
    assert 0 < got < 1


def test_psnr_known_value_and_bad_inputs():
    x = torch.zeros(1, 1, 4, 4)
    y = torch.full((1, 1, 4, 4), 0.1)
    assert metrics.psnr(x, y).item() == pytest.approx(20.0)
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(x, torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(x, y)
    with pytest.raises(ValueError, match="data_range"):
        metrics.psnr(x, y, data_range=0)


def test_summarise_counts_infinite_values():
    s = metrics.summarise([1.0, 3.0, float("inf")])
    assert s == {"count": 3, "infinite": 1, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert metrics.summarise([float("inf")])["mean"] == math.inf
    assert metrics.summarise([])["mean"] is None
