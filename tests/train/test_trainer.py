"""The trainer: one training step at 128^2 on the CPU with each available backend, the fused
backends against the reference backend over the whole generator loss, and bad settings.

The helpers here (a tiny image folder with masks, a tiny config) are shared by the other trainer
tests (resume, DDP, CLI)."""
import os

import numpy as np
import pytest
import torch

from tests.backends import assert_gradients_close, relative_error, require
from wscswap_fast import ops
from wscswap_fast.train.config import load_config
from wscswap_fast.train.distributed import DistInfo
from wscswap_fast.train.trainer import Trainer, image_grid

RES = 128


def make_folder(root, n: int = 8, size: int = 32, seed: int = 0):
    """n small random RGB crops with rectangular face masks: (image folder, mask folder). The
    loader resizes them to the training resolution; masks given, so no dlib is needed."""
    import cv2

    img_dir, mask_dir = os.path.join(root, "img"), os.path.join(root, "mask")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(os.path.join(img_dir, f"{i}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        mask = np.zeros((size, size), np.uint8)
        mask[size // 5:size - size // 5, size // 4:size - size // 4] = 255
        cv2.imwrite(os.path.join(mask_dir, f"{i}.png"), mask)
    return img_dir, mask_dir


def tiny_overrides(img_dir, mask_dir, out_dir, *, backend="cpu", batch=2, steps=2, width=0.125):
    """A run that takes about a second a step on two cores: 128^2, width 0.125, the small
    encoders (iresnet18, resnet18), a narrow discriminator, no worker processes."""
    return [f"data.root={img_dir}", f"data.mask_root={mask_dir}", f"data.resolution={RES}", f"data.batch_size={batch}",
            "data.workers=0", f"model.generator_width={width}", "model.identity_arch=iresnet18",
            "model.regressor_arch=resnet18", "model.discriminator_channels=8", f"run.out_dir={out_dir}",
            f"run.steps={steps}", "run.device=cpu", f"run.backend={backend}", "run.log_every=1",
            "run.image_every=1", "run.save_every=0"]


def tiny_config(tmp_path, **kw):
    img_dir, mask_dir = make_folder(str(tmp_path / "data"))
    return load_config(None, tiny_overrides(img_dir, mask_dir, str(tmp_path / "run"), **kw))


def random_batch(n: int, seed: int = 0, same=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, RES), torch.linspace(-1, 1, RES), indexing="ij")
    mask = ((1.0 - (xx ** 2 / 0.35 + yy ** 2 / 0.5)) * 8).clamp(0, 1)  # a soft elliptic face
    return {"source": torch.rand(n, 3, RES, RES, generator=g), "target": torch.rand(n, 3, RES, RES, generator=g),
            "target_mask": mask.expand(n, 1, RES, RES).contiguous(),
            "same": torch.tensor(same if same is not None else [float(i % 2 == 0) for i in range(n)])}


SINGLE = DistInfo()  # one process on the CPU, whatever the environment says


def _backends():
    out = []
    for b in ("reference", "cpu", "triton", "cuda"):
        marks = {"triton": [pytest.mark.slow], "cuda": [pytest.mark.cuda]}.get(b, [])
        out.append(pytest.param(b, marks=marks, id=b))
    return out


def _on(device: torch.device) -> DistInfo:
    return DistInfo(device=device)


@pytest.mark.parametrize("backend", _backends())
def test_one_training_step_per_backend(tmp_path, backend, monkeypatch):
    device = require(backend)  # skips triton / cuda where they cannot run
    if ops.available()[backend] is not True:
        pytest.fail(f"{backend}: {ops.available()[backend]}")
    # The Triton interpreter (TRITON_INTERPRET=1, no GPU) runs each kernel program in numpy:
    # a 128^2 step of the width-0.125 model takes minutes there, so its step is the narrowest model,
    # and its convolutions stay direct (the frozen ResNets' Winograd transforms would take hours
    # interpreted; tests/ops/test_winograd_conv2d.py runs the Triton transforms on small shapes).
    interpreted = backend == "triton" and not torch.cuda.is_available()
    if interpreted:
        monkeypatch.setattr("wscswap_fast.nn.conv.WINOGRAD_MIN_CHANNELS", 1 << 30)
    batch = 1 if interpreted else 2
    cfg = tiny_config(tmp_path, backend=backend, batch=batch, width=0.0625 if interpreted else 0.125)
    cfg.run.device = device.type
    trainer = Trainer(cfg, dist_info=_on(device), progress=False)
    assert trainer.generator.backend == backend and trainer.non_identity.backend == backend
    before = {n: p.detach().clone() for n, p in trainer.generator.named_parameters()}
    frozen = {n: p.detach().clone() for n, p in trainer.identity_encoder.named_parameters()}
    d_before = [p.detach().clone() for p in trainer.discriminator.parameters()]
    terms = trainer.train_step(random_batch(batch))
    expected = {"identity", "reconstruction", "adversarial", "feature_matching", "identity_removal_g", "mask",
                "3dmm_expression", "3dmm_pose", "3dmm_lighting", "3dmm_landmark", "generator_total",
                "discriminator", "identity_removal"}
    assert expected <= set(terms)
    for name, value in terms.items():
        assert torch.isfinite(value), f"{name} = {value}"
    assert trainer.step == 1
    # G, D and the adversary moved; the frozen encoders did not, and never get gradients
    assert any(not torch.equal(p, before[n]) for n, p in trainer.generator.named_parameters())
    assert any(not torch.equal(p, q) for p, q in zip(trainer.discriminator.parameters(), d_before))
    for n, p in trainer.identity_encoder.named_parameters():
        assert torch.equal(p, frozen[n]) and not p.requires_grad and p.grad is None
    assert all(not p.requires_grad for p in trainer.regressor.parameters())
    # the EMA moved by (1 - decay) of the step
    decay = cfg.optim.ema_decay
    for (n, p), q in zip(trainer.generator.named_parameters(), trainer.generator_ema.parameters()):
        torch.testing.assert_close(q, decay * before[n] + (1 - decay) * p.detach(), rtol=1e-5, atol=1e-7)


def _loss_and_grads(trainer: Trainer, batch: dict, frozen=None):
    trainer.generator.zero_grad(set_to_none=True)
    total, terms, out, _ = trainer.generator_loss(batch, frozen=frozen)
    total.backward()
    return terms, out, {n: p.grad.detach().clone() for n, p in trainer.generator.named_parameters()}


def _check_against_reference(fast, ref, exact, data, frozen, min_strict):
    """Outputs and loss terms within 1e-4; each generator gradient within 1e-4 of the reference
    where the fp32 reference is within 1e-5 of the float64 step ("strict"), else within 10x the
    reference's own rounding error; at least min_strict of the gradients strict."""
    t_ref, o_ref, g_ref = _loss_and_grads(ref, data, frozen)
    t_fast, o_fast, g_fast = _loss_and_grads(fast, data, frozen)
    _, _, g_64 = _loss_and_grads(exact, data, frozen)
    for name in o_ref._fields:
        assert relative_error(getattr(o_fast, name), getattr(o_ref, name)) <= 1e-4, name
    assert set(t_fast) == set(t_ref)
    for name, value in t_ref.items():
        if value.abs() > 1e-6:  # a term that is 0 (no same-identity pair) has no relative error
            assert relative_error(t_fast[name], value) <= 1e-4, (name, t_fast[name].item(), value.item())
    assert_gradients_close(g_fast, g_ref, g_64, min_strict)
    return t_ref


@pytest.mark.parametrize("backend", [pytest.param("cpu", id="cpu"),
                                     pytest.param("triton", id="triton", marks=pytest.mark.slow),
                                     pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)])
def test_fused_backend_matches_reference_over_the_whole_loss(tmp_path, backend):
    """The generator's outputs, every generator loss term and every generator gradient: fused
    backend vs reference backend, fp32, relative error <= 1e-4.

    The frozen encoders' outputs are computed once and given to all three runs (fused, reference,
    and the float64 reference step that measures fp32 rounding).
    Part 1: z_id and the target embedding are random unit vectors (spread like a trained
    ArcFace's), and the terms that reach the generator through no other network
    (reconstruction, identity removal through the small adversary, mask): 1e-4 on at least 60%
    of the gradients; the rest are sums that cancel (mask-projection biases), held to 10x the
    fp32 reference's own error against float64.
    Part 2: the full loss with the random ArcFace's z_id. At random initialisation some paths
    are ill-conditioned in fp32 whatever the backend: backward through the frozen random
    ArcFace and regressor (identity, 3DMM), through the discriminator (instance norm over 2x2
    and 3x3 maps at its coarsest scale; adversarial, feature matching), and the generator itself
    given the random ArcFace's embeddings: the fp32 reference is off the float64 step by
    ~1e-4..1e-3 on nearly every gradient. There the fused backend is held to 10x the
    reference's own error (and 1e-4 where that is below 1e-5).
    """
    from wscswap_fast.losses import LossWeights

    device = require(backend)
    if device.type == "cpu" and backend == "triton":
        pytest.skip("triton without a GPU runs in its interpreter, minutes per generator step; "
                    "tests/ops compare each Triton kernel with the reference on the CPU")
    batch = 2
    cfg = tiny_config(tmp_path, backend="reference", batch=batch)
    cfg.run.device = device.type
    data = random_batch(batch, seed=3, same=[1.0] + [0.0] * (batch - 1))
    ref = Trainer(cfg, dist_info=_on(device), progress=False)
    cfg.run.backend = backend
    fast = Trainer(cfg, dist_info=_on(device), progress=False)
    assert fast.generator.backend == backend and fast.non_identity.backend == backend
    cfg.run.backend = "reference"
    exact = Trainer(cfg, dist_info=_on(device), progress=False).to_dtype(torch.float64)
    for name, module in ref.modules.items():
        torch.testing.assert_close(module.state_dict(), fast.modules[name].state_dict(), rtol=0, atol=0)

    frozen = ref._frozen_features(*ref._inputs(data)[:2])
    g = torch.Generator().manual_seed(5)
    unit = {k: torch.nn.functional.normalize(torch.randn(batch, 512, generator=g), dim=1).to(device)
            for k in ("z_id", "target_emb")}
    full = ref.weights
    local = LossWeights(identity=0, expression=0, pose=0, lighting=0, landmark=0, adversarial=0, feature_matching=0)
    for t in (ref, fast, exact):
        t.weights = local
    terms = _check_against_reference(fast, ref, exact, data, {**frozen, **unit}, min_strict=0.6)
    assert set(terms) == {"reconstruction", "identity_removal_g", "mask", "generator_total"}
    for t in (ref, fast, exact):
        t.weights = full
    terms = _check_against_reference(fast, ref, exact, data, frozen, min_strict=0.0)
    assert {"identity", "3dmm_landmark", "identity_removal_g", "feature_matching"} <= set(terms)


def test_shared_discriminator_forward_gives_the_two_pass_gradients(tmp_path):
    """train_step runs D once on Xt and Y for both losses; its gradients must be those of the
    textbook schedule: G's through a frozen D, then D's on [Xt, Y.detach()] (float64, exact)."""
    from wscswap_fast.losses import hinge_discriminator_loss

    cfg = tiny_config(tmp_path, backend="reference")
    trainer = Trainer(cfg, dist_info=SINGLE, progress=False).to_dtype(torch.float64)
    batch = random_batch(2)
    total, _, out, (_, xt, _, _, _) = trainer.generator_loss(batch)
    total.backward()
    want_g = {n: p.grad.clone() for n, p in trainer.generator.named_parameters()}
    d = trainer.discriminator
    hinge_discriminator_loss(d(xt), d(out.result.detach())).backward()
    want_d = {n: p.grad.clone() for n, p in d.named_parameters()}
    trainer.train_step(batch)
    for module, want in ((trainer.generator, want_g), (d, want_d)):
        for n, p in module.named_parameters():
            torch.testing.assert_close(p.grad, want[n], rtol=1e-9, atol=1e-12, msg=n)


def test_memory_formats_give_the_same_step(tmp_path):
    """run.memory_format only changes strides: the channels_last and contiguous trainers take the
    same step (float64, so layout-dependent summation order stays far below the tolerance)."""
    results = []
    for fmt in ("channels_last", "contiguous"):
        cfg = tiny_config(tmp_path / fmt, backend="cpu")
        cfg.run.memory_format = fmt
        trainer = Trainer(cfg, dist_info=SINGLE, progress=False).to_dtype(torch.float64)
        conv = trainer.generator.face_encoder.stem.weight
        assert conv.is_contiguous(memory_format=trainer.memory_format)
        terms = trainer.train_step(random_batch(2))
        results.append((terms, {n: p.detach().clone() for n, p in trainer.generator.named_parameters()}))
    (t_cl, g_cl), (t_c, g_c) = results
    for name in t_c:
        torch.testing.assert_close(t_cl[name], t_c[name], rtol=1e-9, atol=1e-12, msg=name)
    for name in g_c:
        torch.testing.assert_close(g_cl[name], g_c[name], rtol=1e-9, atol=1e-12, msg=name)


def test_random_encoders_warn_once(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    Trainer(cfg, dist_info=SINGLE, progress=False)
    err = capsys.readouterr().err
    assert err.count("identity will not transfer") >= 1
    assert err.count("training with frozen RANDOM encoders") == 1


def test_amp_on_cpu_is_an_error(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.optim.amp = "bf16"
    with pytest.raises(ValueError, match=r"optim.amp='bf16' runs on GPU only"):
        Trainer(cfg, dist_info=SINGLE, progress=False)


def test_bad_batch(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), dist_info=SINGLE, progress=False)
    batch = random_batch(2)
    del batch["same"]
    with pytest.raises(ValueError, match=r"missing \['same'\]"):
        trainer.train_step(batch)
    batch = random_batch(2)
    batch["target"] = batch["target"][:, :, :64, :64]
    with pytest.raises(ValueError, match=r"batch\['target'\] \(xt\) must be \(N, 3, 128, 128\)"):
        trainer.train_step(batch)
    batch = random_batch(2)
    batch["source"] = batch["source"][:1]
    with pytest.raises(ValueError, match=r"batch\['target'\] \(xt\) must be .* one N"):
        trainer.train_step(batch)


def test_no_morphable_model_with_3dmm_weights_is_an_error(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.model.morphable_model = None
    with pytest.raises(ValueError, match="model.morphable_model"):
        Trainer(cfg, dist_info=SINGLE, progress=False)
    for key in ("expression", "pose", "lighting", "landmark"):
        setattr(cfg.loss, key, 0.0)
    trainer = Trainer(cfg, dist_info=SINGLE, progress=False)  # without the 3DMM terms it trains
    terms = trainer.train_step(random_batch(2))
    assert not any(k.startswith("3dmm") for k in terms) and torch.isfinite(terms["generator_total"])


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_step_on_gpu(tmp_path, amp):
    device = require("cuda")
    cfg = tiny_config(tmp_path, backend="cuda")
    cfg.run.device, cfg.optim.amp = "cuda", amp
    trainer = Trainer(cfg, dist_info=_on(device), progress=False)
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    for _ in range(2):
        terms = trainer.train_step(random_batch(2))
    for name, value in terms.items():
        assert torch.isfinite(value), f"{name} = {value}"
    assert all(p.dtype == torch.float32 for p in trainer.generator.parameters())  # AMP keeps fp32 weights


def test_image_grid_layout():
    s, t, y = (torch.full((3, 3, 8, 8), v) for v in (0.1, 0.2, 0.3))
    m = torch.full((3, 1, 8, 8), 0.4)
    grid = image_grid(s, t, y, m, max_rows=2)
    assert grid.shape == (3, 16, 32)
    for col, v in enumerate((0.1, 0.2, 0.3, 0.4)):
        assert torch.allclose(grid[:, :, col * 8:(col + 1) * 8], torch.tensor(v))
