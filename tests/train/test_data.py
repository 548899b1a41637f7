"""FaceFolder (pairs, masks, augmentation, bad inputs) and the step-indexed loader, on small temp
folders made from the shared aligned crops."""
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from wscswap_fast.train import data as data_mod
from wscswap_fast.train.config import load_config
from wscswap_fast.train.data import (FaceFolder, StepBatchSampler, color_jitter, face_folder_from_config,
                                     make_loader, read_image)

R = 64  # small training resolution: fast tests


@pytest.fixture
def aligned(shared_data):
    files = sorted(Path(shared_data, "faces", "aligned").glob("*.jpg"))
    assert len(files) >= 12
    return files


def make_flat(tmp_path, files, n):
    root = tmp_path / "flat"
    root.mkdir()
    for f in files[:n]:
        shutil.copy(f, root / f.name)
    return root


def make_identities(tmp_path, files, sizes=(3, 2, 1)):
    root = tmp_path / "ids"
    k = 0
    for i, n in enumerate(sizes):
        (root / f"person{i}").mkdir(parents=True)
        for _ in range(n):
            shutil.copy(files[k], root / f"person{i}" / files[k].name)
            k += 1
    return root


def folder(root, tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return FaceFolder(root, kw.pop("resolution", R), **kw)


def test_items(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 6)
    before = sorted(os.listdir(root))
    ds = folder(root, tmp_path, seed=3)
    assert len(ds) == 6 and ds.num_identities == 6
    item = ds[(2, 4)]
    assert set(item) == {"source", "target", "target_mask", "same"}
    for k in ("source", "target"):
        assert item[k].shape == (3, R, R) and item[k].dtype == torch.float32
        assert 0 <= item[k].min() and item[k].max() <= 1
    m = item["target_mask"]
    assert m.shape == (1, R, R) and m.dtype == torch.float32
    assert item["same"].shape == () and item["same"].item() in (0.0, 1.0)
    # an aligned face: the centre is face, the top corners are not; the face covers a fair part
    assert m[0, R // 2, R // 2] == 1 and m[0, 0, 0] == 0 and m[0, 0, -1] == 0
    assert 0.25 < m.mean() < 0.75
    assert sorted(os.listdir(root)) == before  # nothing written into the data folder
    assert ds[4]["target"].equal(ds[(0, 4)]["target"])


def test_hull_mask_matches_eyes(tmp_path, aligned):
    """The predicted landmarks sit on the ArcFace template: eyes near their template points."""
    root = make_flat(tmp_path, aligned, 4)
    ds = folder(root, tmp_path)
    template_eyes = np.array([[38.2946, 51.6963], [73.5318, 51.5014]]) / 112.0
    for lm in ds.landmarks:
        eyes = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])
        assert np.abs(eyes - template_eyes).max() < 0.06  # within 6 % of the crop side


def test_landmark_cache(tmp_path, aligned, monkeypatch):
    root = make_flat(tmp_path, aligned, 3)
    first = folder(root, tmp_path).landmarks
    cache = tmp_path / "cache" / "landmarks68"
    assert len(list(cache.glob("*.npy"))) == 3

    class Boom:
        def __init__(self):
            raise AssertionError("landmarks were recomputed although cached")

    monkeypatch.setattr(data_mod, "AlignedLandmarks", Boom)
    np.testing.assert_array_equal(folder(root, tmp_path).landmarks, first)
    # a changed file (new mtime) is a new key: recomputed
    f = sorted(root.iterdir())[0]
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10 ** 9))
    with pytest.raises(AssertionError, match="recomputed"):
        folder(root, tmp_path)
    monkeypatch.undo()
    np.testing.assert_array_equal(folder(root, tmp_path).landmarks, first)
    assert len(list(cache.glob("*.npy"))) == 4
    assert not list(cache.glob("*.tmp"))


def test_unwritable_cache_warns(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 2)
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the cache folder should go
    with pytest.warns(UserWarning, match="cache"):
        ds = FaceFolder(root, R, cache_dir=str(blocker))
    assert ds[0]["target_mask"].sum() > 0


def test_flat_same_pairs_are_same_image(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 4)
    ds = folder(root, tmp_path, same_identity_ratio=1.0, flip=False, color_jitter=0.0)
    for i in range(4):
        item = ds[(1, i)]
        assert item["same"] == 1 and item["source"].equal(item["target"])
    ds = folder(root, tmp_path, same_identity_ratio=0.0, flip=False, color_jitter=0.0)
    for i in range(4):
        item = ds[(1, i)]
        assert item["same"] == 0 and not item["source"].equal(item["target"])


def test_identity_folders(tmp_path, aligned):
    root = make_identities(tmp_path, aligned)
    ds = folder(root, tmp_path, same_identity_ratio=1.0)
    assert len(ds) == 6 and ds.num_identities == 3
    assert ds.identities == ["person0"] * 3 + ["person1"] * 2 + ["person2"]
    seen = set()
    for e in range(8):
        for i in range(6):
            src, same, _ = ds.pair(e, i)
            assert same and ds.identities[src] == ds.identities[i]
            seen.add((i, src))
    assert {(0, 1), (0, 2), (3, 4)} <= seen  # other images of the same person are drawn
    ds = folder(root, tmp_path, same_identity_ratio=0.0)
    for e in range(8):
        for i in range(6):
            src, same, _ = ds.pair(e, i)
            assert not same and ds.identities[src] != ds.identities[i]
    assert ds[(0, 5)]["same"] == 0


def test_same_identity_ratio(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 6)
    ds = folder(root, tmp_path, same_identity_ratio=0.3)
    same = [ds.pair(e, i)[1] for e in range(300) for i in range(6)]
    assert abs(np.mean(same) - 0.3) < 0.03
    sources = [ds.pair(e, 0)[0] for e in range(300)]
    assert set(sources) == set(range(6))


def test_single_identity_pairs_are_same(tmp_path, aligned):
    root = make_identities(tmp_path, aligned, sizes=(3,))
    ds = folder(root, tmp_path, same_identity_ratio=0.0)
    assert all(ds.pair(e, i)[1] for e in range(5) for i in range(3))


def test_flip_is_consistent_and_deterministic(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 4)
    plain = folder(root, tmp_path, flip=False, color_jitter=0.0, seed=5)
    flip = folder(root, tmp_path, flip=True, color_jitter=0.0, seed=5)
    flipped = 0
    for e in range(6):
        a, b = plain[(e, 1)], flip[(e, 1)]
        if b["target"].equal(a["target"]):
            assert b["target_mask"].equal(a["target_mask"])
        else:
            flipped += 1
            assert b["target"].equal(a["target"].flip(-1))
            assert b["target_mask"].equal(a["target_mask"].flip(-1))  # the mask flips with its image
        assert b["source"].equal(a["source"]) or b["source"].equal(a["source"].flip(-1))
    assert 0 < flipped < 6
    for k, v in flip[(3, 2)].items():
        assert v.equal(flip[(3, 2)][k])  # the same key, the same item


def test_color_jitter_determinism(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 3)
    ds = folder(root, tmp_path, color_jitter=0.3, flip=False, same_identity_ratio=1.0, seed=1)
    plain = folder(root, tmp_path, color_jitter=0.0, flip=False, same_identity_ratio=1.0, seed=1)
    a = ds[(0, 1)]
    assert a["target"].equal(ds[(0, 1)]["target"])
    assert not a["target"].equal(ds[(1, 1)]["target"])  # another epoch, other factors
    assert not a["target"].equal(plain[(0, 1)]["target"])
    assert not a["target"].equal(a["source"])  # source and target draw their own factors
    assert a["target_mask"].equal(plain[(0, 1)]["target_mask"])  # the mask is not jittered
    other_seed = folder(root, tmp_path, color_jitter=0.3, flip=False, same_identity_ratio=1.0, seed=2)
    assert not a["target"].equal(other_seed[(0, 1)]["target"])


def test_color_jitter_function():
    x = torch.rand(3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(color_jitter(x, 1.0, 1.0, 1.0), x)
    gray = color_jitter(x, 1.0, 1.0, 0.0)
    torch.testing.assert_close(gray[0], gray[1])
    torch.testing.assert_close(gray[0], (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)).sum(0))
    flat = color_jitter(x, 1.0, 0.0, 1.0)  # zero contrast: every pixel the mean luma
    assert torch.allclose(flat, flat.flatten()[0].expand_as(flat))
    torch.testing.assert_close(color_jitter(x * 0.5, 1.5, 1.0, 1.0), (x * 0.75))
    assert color_jitter(x, 3.0, 1.0, 1.0).max() <= 1.0


def test_mask_folder(tmp_path, aligned):
    root = make_identities(tmp_path, aligned, sizes=(2, 1))
    masks = tmp_path / "masks"
    expected = {}
    for k, img in enumerate(sorted(root.rglob("*.jpg"))):
        rel = img.relative_to(root)
        (masks / rel.parent).mkdir(parents=True, exist_ok=True)
        m = np.zeros((224, 224), np.uint8)
        m[40 + 10 * k:180, 50:170] = 255
        if k == 1:  # a colour mask is converted to gray
            cv2.imwrite(str(masks / rel.with_suffix(".png")), np.stack([m] * 3, -1))
        else:
            cv2.imwrite(str(masks / rel.with_suffix(".png")), m)
        expected[str(img)] = cv2.resize(m.astype(np.float32) / 255, (R, R), interpolation=cv2.INTER_AREA)
    ds = folder(root, tmp_path, mask_root=masks, flip=False)
    assert ds.landmarks is None
    for i, p in enumerate(ds.paths):
        np.testing.assert_allclose(ds[i]["target_mask"][0].numpy(), expected[p], atol=1e-6)
    os.remove(masks / "person1" / f"{aligned[2].stem}.png")
    with pytest.raises(ValueError, match=aligned[2].name):
        folder(root, tmp_path, mask_root=masks)
    with pytest.raises(FileNotFoundError, match="nope"):
        folder(root, tmp_path, mask_root=tmp_path / "nope")


def test_empty_and_missing_folders(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty"):
        folder(empty, tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        folder(tmp_path / "missing", tmp_path)


def test_unreadable_images(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 2)
    (root / "text.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="text.jpg"):
        folder(root, tmp_path)
    os.remove(root / "text.jpg")
    # a JPEG signature followed by garbage: looks like an image, does not decode
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="broken.jpg"):
        folder(root, tmp_path)  # the hull masks decode every image up front
    masks = tmp_path / "m"
    masks.mkdir()
    for p in root.iterdir():
        cv2.imwrite(str(masks / (p.stem + ".png")), np.full((224, 224), 255, np.uint8))
    ds = folder(root, tmp_path, mask_root=masks)  # with masks, images are decoded when loaded
    bad = ds.paths.index(str(root / "broken.jpg"))
    with pytest.raises(ValueError, match="broken.jpg"):
        ds[bad]


def test_gray_rgba_16bit(tmp_path, aligned):
    root = tmp_path / "modes"
    root.mkdir()
    bgr = cv2.imread(str(aligned[0]))
    cv2.imwrite(str(root / "a_gray.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "b_rgba.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(root / "c_rgb.png"), bgr)
    cv2.imwrite(str(root / "d_16bit.png"), bgr.astype(np.uint16) * 257)
    gray = read_image(root / "a_gray.png")
    assert gray.shape == (224, 224, 3) and (gray[..., 0] == gray[..., 2]).all()
    rgb = read_image(root / "c_rgb.png")
    np.testing.assert_array_equal(read_image(root / "b_rgba.png"), rgb)  # alpha dropped
    np.testing.assert_array_equal(read_image(root / "d_16bit.png"), rgb)
    ds = folder(root, tmp_path, flip=False, color_jitter=0.0)
    items = [ds[i] for i in range(4)]
    for it in items:
        assert it["target"].shape == (3, R, R)
    assert items[1]["target"].equal(items[2]["target"]) and items[3]["target"].equal(items[2]["target"])
    assert items[0]["target"][0].equal(items[0]["target"][1])


def test_sizes(tmp_path, aligned):
    root = tmp_path / "sizes"
    root.mkdir()
    bgr = cv2.imread(str(aligned[0]))
    cv2.imwrite(str(root / "small.png"), cv2.resize(bgr, (100, 100), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(root / "big.png"), cv2.resize(bgr, (300, 300)))
    ds = folder(root, tmp_path, flip=False, color_jitter=0.0)  # square crops of any size are resized
    a, b = ds[0], ds[1]
    assert a["target"].shape == b["target"].shape == (3, R, R)
    assert (a["target"] - b["target"]).abs().mean() < 0.03
    assert (a["target_mask"] != b["target_mask"]).float().mean() < 0.03  # the same face, the same mask
    cv2.imwrite(str(root / "wide.png"), bgr[:200])
    with pytest.raises(ValueError, match=r"wide.png is 224x200.*square"):
        folder(root, tmp_path)


def test_bad_arguments(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 2)
    for kw, word in [(dict(resolution=0), "resolution"), (dict(same_identity_ratio=2.0), "same_identity_ratio"),
                     (dict(color_jitter=-1.0), "color_jitter"), (dict(seed=-1), "seed")]:
        with pytest.raises(ValueError, match=word):
            folder(root, tmp_path, **kw)
    ds = folder(root, tmp_path)
    with pytest.raises(IndexError):
        ds[5]


def test_from_config(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 4)
    cfg = load_config(None, [f"data.root={root}", "data.resolution=128", f"data.cache_dir={tmp_path / 'c'}",
                             "run.seed=9", "data.same_identity_ratio=0.5"])
    ds = face_folder_from_config(cfg)
    assert ds.resolution == 128 and ds.seed == 9 and ds.same_identity_ratio == 0.5
    with pytest.raises(ValueError, match="data.root"):
        face_folder_from_config(load_config(None))


# ---- the loader ----

def keys(batch):
    return [tuple(k) for k in batch]


def test_sampler_epochs_and_sharding():
    s0 = StepBatchSampler(22, 2, seed=4, rank=0, world_size=2)
    s1 = StepBatchSampler(22, 2, seed=4, rank=1, world_size=2)
    assert s0.steps_per_epoch == 5  # 22 // 4: the incomplete tail is dropped
    for epoch in range(3):
        seen = []
        for b in range(5):
            step = epoch * 5 + b
            a, c = s0.batch(step), s1.batch(step)
            assert len(a) == len(c) == 2 and not set(a) & set(c)
            assert all(e == epoch for e, _ in a + c)
            seen += [i for _, i in a + c]
        assert len(set(seen)) == 20  # no index twice in an epoch
    assert [i for _, i in s0.batch(0)] != [i for _, i in s0.batch(5)]  # epochs reshuffle
    it = iter(StepBatchSampler(22, 2, seed=4, rank=1, world_size=2, start_step=7))
    assert next(it) == s1.batch(7) and next(it) == s1.batch(8)
    assert list(StepBatchSampler(22, 2, 4, start_step=3, steps=6)) == [StepBatchSampler(22, 2, 4).batch(s)
                                                                       for s in (3, 4, 5)]
    assert len(StepBatchSampler(22, 2, 4, start_step=3, steps=6)) == 3
    with pytest.raises(TypeError):
        len(s0)


@pytest.mark.parametrize("kw, word", [
    (dict(batch_size=0), "batch_size"), (dict(rank=2, world_size=2), "rank"), (dict(world_size=0), "world_size"),
    (dict(seed=-1), "seed"), (dict(start_step=-1), "start_step"), (dict(batch_size=8, world_size=2), "global batch"),
    (dict(steps=-1), "steps")])
def test_sampler_bad_arguments(kw, word):
    args = dict(num_items=10, batch_size=2, seed=0) | kw
    with pytest.raises(ValueError, match=word):
        StepBatchSampler(**args)


def take(loader, n):
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    return out


def test_loader_same_batches_for_any_workers_and_resume(tmp_path, aligned):
    root = make_flat(tmp_path, aligned, 10)
    ds = folder(root, tmp_path, same_identity_ratio=0.5, color_jitter=0.2)
    straight = take(make_loader(ds, 3, workers=0, seed=11), 7)  # 3 steps per epoch: crosses two epochs
    resumed = take(make_loader(ds, 3, workers=2, seed=11, start_step=4), 3)
    for a, b in zip(straight[4:], resumed):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].equal(b[k]), k
    assert straight[0]["target"].shape == (3, 3, R, R) and straight[0]["same"].shape == (3,)
    other = take(make_loader(ds, 3, workers=0, seed=12), 1)[0]
    assert not other["target"].equal(straight[0]["target"])
    # two ranks: each gets its own half of the global batch
    r0 = take(make_loader(ds, 2, 0, 11, rank=0, world_size=2), 1)[0]
    r1 = take(make_loader(ds, 2, 0, 11, rank=1, world_size=2), 1)[0]
    glob = take(make_loader(ds, 4, 0, 11), 1)[0]
    assert torch.cat([r0["target"], r1["target"]]).equal(glob["target"])
    with pytest.raises(ValueError, match="workers"):
        make_loader(ds, 2, -1, 0)
