"""The WSC-swap trainer: one process, or DDP under torchrun (see :mod:`.distributed`).

One step, on a batch of (source Xs, target Xt, target mask Mt, same-identity flag):

1. frozen encoders, no grad: z_id = ArcFace(Xs), e_t = ArcFace(Xt), the 3DMM coefficients of
   Xt and Xs;
2. the generator: Y, F, M, face_code = G(Xt, Mt, z_id);
3. generator step (E_face, E_bg, decoder, heads: one Adam at optim.lr_g). The identity
   adversary is frozen for this pass (its raw module, outside DDP); the discriminator's
   gradients from it are not computed (backward with inputs=G's parameters). Terms: identity
   1-cos(ArcFace(Y), z_id); reconstruction L1 on the same-identity pairs; hinge adversarial and feature matching through the multi-scale
   discriminator; identity removal, E_face's side: the negative of the adversary's loss
   (see :func:`wscswap_fast.losses.identity_removal_generator_loss`); the 3DMM non-identity
   terms (expression, pose, lighting, the fused landmark loss) through NonIdentityLoss; the
   mask L1 against the target mask dilated by loss.mask_dilate pixels. Then the EMA update;
4. discriminator step (Adam at optim.lr_d) on Xt and Y. D is the same module with the same weights
   in steps 3 and 4, so its forwards on Xt and Y are run once (through DDP) and serve both
   losses: the D loss backpropagates into D's parameters only (not into G), the G loss into G's
   only. Compared with a frozen-D forward for G then a second forward for D, that saves one
   discriminator forward on [Xt, Y] and the input gradients of the real half (a 256^2 step's
   discriminator is ~70% of its convolution FLOPs);
5. identity adversary step (its own Adam, at optim.lr_d) minimising 1-cos(A(face_code.detach()),
   e_t).

Every term is logged separately (TensorBoard, a JSONL file, the tqdm bar). AMP (bf16, or fp16
with a GradScaler) runs on GPU only. Checkpoints (wscswap_fast.train.checkpoint) hold the four
modules (generator, generator_ema, discriminator, adversary), the three optimisers, the step,
the RNG states and the grad scaler, so a resumed run continues bit for bit; the data loader
resumes at the step.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write_text
from ..losses import (LossWeights, NonIdentityLoss, feature_matching_loss, hinge_discriminator_loss,
                      hinge_generator_loss, identity_loss, identity_removal_generator_loss, identity_removal_loss,
                      mask_loss, reconstruction_loss)
from .distributed import DistInfo, barrier, init_distributed, mean_over_ranks, shutdown, wrap_ddp

MODULE_NAMES = ("generator", "generator_ema", "discriminator", "adversary")
OPTIMIZER_NAMES = ("generator", "discriminator", "adversary")
LOG_FILE = "log.jsonl"
REGRESSOR_SIZE = 224  # Deep3DFaceRecon's input side; NonIdentityLoss's camera is set for it


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def image_grid(source: torch.Tensor, target: torch.Tensor, result: torch.Tensor, mask: torch.Tensor,
               max_rows: int = 4) -> torch.Tensor:
    """(3, rows*R, 4*R) in [0, 1]: per sample a row source | target | result | mask."""
    n = min(max_rows, source.shape[0])
    cols = [source[:n], target[:n], result[:n], mask[:n].expand(-1, 3, -1, -1)]
    rows = torch.cat([c.detach().float().clamp(0, 1).cpu() for c in cols], dim=3)  # (n, 3, R, 4R)
    return torch.cat(list(rows), dim=1)


class Trainer:
    """Builds the models, optimisers, data and writers of a TrainConfig and runs the steps.

    ``Trainer(cfg)`` builds everything but the data loader and writes nothing; :meth:`fit` runs
    the loop (and writes, on rank 0); :meth:`train_step` runs one step on a batch dict
    (source, target, target_mask, same), usable alone in tests.
    """

    def __init__(self, cfg, *, dist_info: DistInfo | None = None, progress: bool = True):
        self.cfg = cfg
        self.info = dist_info if dist_info is not None else init_distributed(cfg.run.device)
        self.device = self.info.device
        self.progress = progress
        self.weights = LossWeights.from_config(cfg.loss)
        self.step = 0
        self.dtype = torch.float32  # of the inputs and the loss terms; see to_dtype
        amp = cfg.optim.amp
        if amp != "none" and self.device.type != "cuda":
            raise ValueError(f"optim.amp={amp!r} runs on GPU only (autocast on the CPU is slower and bf16 there "
                             f"is not what the kernels are tuned for); use optim.amp=none on {self.device}")
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16"))
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        self._build_models()
        self._build_optimizers()
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_steps = 0

    # ---------------------------------------------------------------- building
    def _build_models(self) -> None:
        from ..models import (Generator, GeneratorConfig, IdentityAdversary, MultiScaleDiscriminator,
                              load_coefficient_regressor, load_identity_encoder)

        cfg, dev = self.cfg, self.device
        self.generator_config = GeneratorConfig.for_resolution(cfg.data.resolution, cfg.model.generator_width)
        self.generator = Generator(self.generator_config).to(dev)
        self.generator.set_backend(cfg.run.backend)
        self.generator_ema = copy.deepcopy(self.generator).eval()
        _requires_grad(self.generator_ema, False)
        self.discriminator = MultiScaleDiscriminator(
            in_channels=3, num_scales=cfg.model.discriminator_scales, base_channels=cfg.model.discriminator_channels,
            num_layers=cfg.model.discriminator_layers).to(dev)
        self.adversary = IdentityAdversary(self.generator_config.code_channels,
                                           id_dim=self.generator_config.id_dim).to(dev)

        w = self.weights
        self.use_non_identity = any(v > 0 for v in w.non_identity().values())
        caught = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.identity_encoder = load_identity_encoder(cfg.model.identity_checkpoint, cfg.model.identity_arch).to(dev)
            self.regressor = self.non_identity = None
            if self.use_non_identity:
                if not cfg.model.morphable_model:
                    raise ValueError("the 3DMM non-identity loss needs model.morphable_model (a Surrey Face Model "
                                     "folder or BFM_model_front.mat); set it, or set loss.expression, loss.pose, "
                                     "loss.lighting, loss.landmark and loss.photometric to 0")
                from ..models.morphable import load_morphable_model

                morphable = load_morphable_model(cfg.model.morphable_model)
                self.regressor = load_coefficient_regressor(
                    cfg.model.regressor_checkpoint, cfg.model.regressor_arch, num_id=morphable.num_id,
                    num_exp=morphable.num_exp, num_tex=morphable.num_albedo).to(dev)
                # the camera 1 m from the face whatever the model's unit (Deep3DFaceRecon: 10 dm)
                self.non_identity = NonIdentityLoss(
                    morphable.to(dev), image_size=REGRESSOR_SIZE, camera_distance=float(morphable.units_per_metre),
                    backend=cfg.run.backend, **w.non_identity())
        if self.info.is_main:  # printed once, by rank 0
            for message in dict.fromkeys(str(c.message) for c in caught):
                print(f"wscswap train: WARNING: {message}", file=sys.stderr)
            if cfg.model.identity_checkpoint is None or (self.use_non_identity and cfg.model.regressor_checkpoint is None):
                print("wscswap train: WARNING: training with frozen RANDOM encoders (no ArcFace and/or 3DMM "
                      "regressor checkpoint given): the run exercises the code, but identity will not transfer "
                      "to real faces. Give model.identity_checkpoint / model.regressor_checkpoint for a real model.",
                      file=sys.stderr)
        from ..nn import set_backend as set_layer_backend

        for m in (self.discriminator, self.adversary, self.identity_encoder, self.regressor):
            if m is not None:  # their fused layers: Winograd convolutions, D's instance norm + LeakyReLU
                set_layer_backend(m, cfg.run.backend)
        self.memory_format = {"channels_last": torch.channels_last,
                              "contiguous": torch.contiguous_format}[cfg.run.memory_format]
        for m in self._networks():
            m.to(memory_format=self.memory_format)
        self.g_train = wrap_ddp(self.generator, self.info)
        self.d_train = wrap_ddp(self.discriminator, self.info)
        self.a_train = wrap_ddp(self.adversary, self.info)

    def _build_optimizers(self) -> None:
        o = self.cfg.optim
        # fused: one kernel over all of a network's parameters (CPU and CUDA), not a loop of small
        # ops per tensor: the G and D steps' Adam 29 -> 10 ms at 256^2 on the CPU
        kw = dict(betas=tuple(float(b) for b in o.betas), fused=True)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=o.lr_g, **kw)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=o.lr_d, **kw)
        # the adversary is a discriminator of the code: it learns at D's rate, with its own state
        self.opt_a = torch.optim.Adam(self.adversary.parameters(), lr=o.lr_d, **kw)

    def to_dtype(self, dtype: torch.dtype) -> "Trainer":
        """Every module (trained and frozen), the 3DMM and the inputs in `dtype`. Training runs in
        float32 (with autocast for AMP); tests use float64 as the exact reference of a step."""
        for m in self._networks():
            m.to(dtype)  # in place: the optimisers keep their parameters
        if self.non_identity is not None:
            self.non_identity.model = self.non_identity.model.to(dtype=dtype)
        self.dtype = dtype
        return self

    def _networks(self) -> list[nn.Module]:
        """Every network the trainer runs, trained and frozen (the regressor only with 3DMM terms)."""
        nets = [self.generator, self.generator_ema, self.discriminator, self.adversary, self.identity_encoder,
                self.regressor]
        return [m for m in nets if m is not None]

    @property
    def modules(self) -> dict:
        return {"generator": self.generator, "generator_ema": self.generator_ema,
                "discriminator": self.discriminator, "adversary": self.adversary}

    @property
    def optimizers(self) -> dict:
        return {"generator": self.opt_g, "discriminator": self.opt_d, "adversary": self.opt_a}

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _no_autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    # ---------------------------------------------------------------- one step
    def _inputs(self, batch: dict):
        missing = [k for k in ("source", "target", "target_mask", "same") if k not in batch]
        if missing:
            raise ValueError(f"a training batch needs keys source, target, target_mask, same; missing {missing}")
        r = self.generator_config.resolution
        n = batch["source"].shape[0] if isinstance(batch["source"], torch.Tensor) else None
        for key, name in (("source", "xs"), ("target", "xt")):
            x = batch[key]
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != (n, 3, r, r):
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"batch['{key}'] ({name}) must be (N, 3, {r}, {r}) with one N for source and "
                                 f"target, got {got}")
        dev, dt = self.device, self.dtype
        fmt = self.memory_format
        xs = batch["source"].to(dev, dt, non_blocking=True, memory_format=fmt)
        xt = batch["target"].to(dev, dt, non_blocking=True, memory_format=fmt)
        mt = batch["target_mask"].to(dev, dt, non_blocking=True, memory_format=fmt)
        same = batch["same"].to(dev, dt, non_blocking=True).reshape(-1)
        return xs, xt, mt, same

    @torch.no_grad()
    def _frozen_features(self, xs, xt) -> dict:
        """The frozen encoders on Xs and Xt, each network once on the two batches stacked: one
        call of twice the batch fills the small late layers' GEMMs better than two calls (eval
        mode: every sample's result is its own)."""
        w = self.weights
        n = xs.shape[0]
        both = torch.cat([xs, xt]).contiguous(memory_format=self.memory_format)
        with self._autocast():
            if w.identity_removal > 0:
                z_id, target_emb = self.identity_encoder(both).to(self.dtype).split(n)
                feats = {"z_id": z_id, "target_emb": target_emb}
            else:
                feats = {"z_id": self.identity_encoder(xs).to(self.dtype)}
            if self.non_identity is not None:
                feats["coeff_source"], feats["coeff_target"] = self.regressor(both).to(self.dtype).split(n)
        return feats

    def generator_loss(self, batch: dict, generator: nn.Module | None = None, frozen: dict | None = None,
                       discriminator_features: list | None = None):
        """Forward of the generator and every generator-side term (the adversary frozen, used
        through its raw module). Returns (total, terms, output, inputs).

        frozen: the frozen encoders' outputs for this batch (z_id, target_emb, coeff_target,
        coeff_source), computed here when None (tests pass one run's to another).
        discriminator_features: None: D is frozen and run through its raw module (Xt without
        grad). A list: D runs through d_train with its parameters trainable, and the list receives
        (real, fake), its per-scale features of Xt and Y, for train_step's D loss."""
        from ..pipeline.masks import dilate_mask

        w = self.weights
        xs, xt, mt, same = self._inputs(batch)
        if frozen is None:
            frozen = self._frozen_features(xs, xt)
        else:
            frozen = {k: v.to(self.device, self.dtype) for k, v in frozen.items()}
        z_id = frozen["z_id"]
        keep_d = discriminator_features is not None
        _requires_grad(self.discriminator, keep_d)
        _requires_grad(self.adversary, False)
        terms: dict[str, torch.Tensor] = {}
        total = xt.new_zeros(())
        try:
            with self._autocast():
                out = (generator or self.g_train)(xt, mt, z_id)
                y = out.result
                if w.identity > 0:
                    terms["identity"] = identity_loss(self.identity_encoder(y).to(self.dtype), z_id)
                if w.reconstruction > 0:
                    terms["reconstruction"] = reconstruction_loss(y, xt, same)
                if w.adversarial > 0 or w.feature_matching > 0:
                    d = self.d_train if keep_d else self.discriminator
                    fake = d(y.to(xt.dtype))
                    if keep_d:
                        real = d(xt)
                        discriminator_features.append((real, fake))
                    elif w.feature_matching > 0:
                        with torch.no_grad():  # constants of the feature-matching term
                            real = d(xt)
                    if w.adversarial > 0:
                        terms["adversarial"] = hinge_generator_loss(fake)
                    if w.feature_matching > 0:
                        terms["feature_matching"] = feature_matching_loss(real, fake)
                if w.identity_removal > 0:
                    terms["identity_removal_g"] = identity_removal_generator_loss(
                        self.adversary(out.face_code).to(self.dtype), frozen["target_emb"])
                if w.mask > 0:
                    terms["mask"] = mask_loss(out.mask, dilate_mask(mt, int(self.cfg.loss.mask_dilate)))
                use_3dmm = self.non_identity is not None and any(v > 0 for v in w.non_identity().values())
                coeff_y = self.regressor(y).to(self.dtype) if use_3dmm else None
            for name, value in terms.items():
                total = total + getattr(w, "identity_removal" if name == "identity_removal_g" else name) * value
            if use_3dmm:
                with self._no_autocast():
                    extra = {}
                    if w.photometric > 0:
                        extra = dict(result_image=F.interpolate(y.to(self.dtype), size=REGRESSOR_SIZE, mode="bilinear",
                                                                align_corners=False),
                                     face_mask=F.interpolate(mt, size=REGRESSOR_SIZE, mode="bilinear",
                                                             align_corners=False))
                    self.non_identity.weights = w.non_identity()  # the weights in force (tests change them)
                    nonid = self.non_identity(coeff_y, frozen["coeff_target"], frozen["coeff_source"], **extra)
                for name, value in nonid.items():
                    if name != "total":
                        terms[f"3dmm_{name}"] = value
                total = total + nonid["total"]
        finally:
            _requires_grad(self.discriminator, True)
            _requires_grad(self.adversary, True)
        terms["generator_total"] = total
        return total, terms, out, (xs, xt, mt, same, frozen)

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = float(self.cfg.optim.ema_decay)
        ema = list(self.generator_ema.parameters())
        src = list(self.generator.parameters())
        torch._foreach_lerp_(ema, src, 1.0 - decay)
        for b_ema, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
            b_ema.copy_(b)

    def train_step(self, batch: dict, frozen: dict | None = None) -> dict:
        """One G step, one D step and one adversary step; returns the terms as detached tensors.
        frozen: see :meth:`generator_loss` (the benchmark passes cached encoder outputs)."""
        w = self.weights
        self.generator.train()
        self.discriminator.train()
        self.adversary.train()
        d_features: list = []
        loss_g, terms, out, (xs, xt, mt, same, frozen) = self.generator_loss(batch, frozen=frozen,
                                                                            discriminator_features=d_features)
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        train_d = bool(d_features)
        if train_d:
            # D's loss on the shared forwards, into D's parameters only; the graph is kept for
            # G's backward through the fake branch, and the real branch's is freed with d_features
            with self._autocast():
                loss_d = hinge_discriminator_loss(*d_features.pop())
            self.scaler.scale(loss_d).backward(inputs=list(self.discriminator.parameters()), retain_graph=True)
            terms["discriminator"] = loss_d.detach()
            del loss_d
        self.scaler.scale(loss_g).backward(inputs=list(self.generator.parameters()))
        self.scaler.step(self.opt_g)
        self._update_ema()
        if train_d:
            self.scaler.step(self.opt_d)

        y = out.result.detach()
        if w.identity_removal > 0:
            with self._autocast():
                loss_a = identity_removal_loss(self.a_train(out.face_code.detach()).to(self.dtype),
                                               frozen["target_emb"])
            self.opt_a.zero_grad(set_to_none=True)
            self.scaler.scale(loss_a).backward()
            self.scaler.step(self.opt_a)
            terms["identity_removal"] = loss_a
        self.scaler.update()
        self.step += 1
        self._last = (xs, xt, y, out.mask.detach())
        return {k: v.detach() for k, v in terms.items()}

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        """The training state saved beside the weights (the checkpoint adds the RNG states)."""
        return {"step": self.step, "grad_scaler": _jsonable_scaler(self.scaler.state_dict()),
                "world_size": self.info.world_size}

    def save(self) -> str | None:
        """A checkpoint of this step (rank 0 writes, keeping run.keep_checkpoints; every rank
        waits for it). Returns its directory (None on other ranks)."""
        from .checkpoint import save_checkpoint

        path = None
        if self.info.is_main:
            path = str(save_checkpoint(self.cfg.run.out_dir, self.step, self.modules, self.optimizers, self.state(),
                                       self.cfg))
        barrier(self.info)
        return path

    def load(self, path) -> dict:
        """Restore weights (all four modules), optimisers, step, RNG states and the grad scaler
        from a checkpoint; ValueError naming the mismatched tensors for another config's."""
        from .checkpoint import load_checkpoint

        state = load_checkpoint(path, self.modules, self.optimizers, restore_rng=True)
        self.step = int(state["step"])
        if state.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])
        return state

    # ---------------------------------------------------------------- the loop
    def _accumulate(self, terms: dict) -> None:
        for k, v in terms.items():
            self._acc[k] = self._acc.get(k, 0) + v.float()
        self._acc_steps += 1

    def _drain(self) -> dict:
        values = {k: (v / self._acc_steps).item() for k, v in self._acc.items()} if self._acc_steps else {}
        self._acc, self._acc_steps = {}, 0
        return mean_over_ranks(values, self.info)

    def fit(self, resume: bool = False) -> dict:
        """Run from step 0 (or the latest checkpoint with resume=True) to run.steps; returns a
        summary: step, out_dir, checkpoint, last logged losses, images/s, seconds."""
        from .checkpoint import latest_checkpoint
        from .config import save_config
        from .data import face_folder_from_config, make_loader

        cfg, info = self.cfg, self.info
        out_dir = Path(cfg.run.out_dir)
        if resume:
            path = latest_checkpoint(out_dir)
            if path is None:
                if info.is_main:
                    print(f"wscswap train: --resume: no checkpoint in {out_dir / 'checkpoints'}, starting at step 0",
                          file=sys.stderr)
            else:
                self.load(path)
                if info.is_main:
                    print(f"wscswap train: resumed from {path} at step {self.step}", file=sys.stderr)
        writer = None
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out_dir / "config.json")
            _truncate_log(out_dir / LOG_FILE, self.step)
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=self.step + 1 if self.step else None)
        # rank 0 computes (and caches) the hull masks first; the others then read its cache
        dataset = face_folder_from_config(cfg, progress=self.progress) if info.is_main else None
        barrier(info)
        if dataset is None:
            dataset = face_folder_from_config(cfg, progress=False)
        # batches depend on (seed, step) only: a resumed run gets the batches it would have had
        loader = make_loader(dataset, cfg.data.batch_size, cfg.data.workers, cfg.run.seed, info.rank,
                             info.world_size, start_step=self.step, steps=max(cfg.run.steps, self.step),
                             pin_memory=self.device.type == "cuda")
        batches = iter(loader)
        images_per_step = cfg.data.batch_size * info.world_size
        bar = None
        if info.is_main and self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.run.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        start_time = window_time = time.perf_counter()
        window_start, start_step = self.step, self.step
        last, last_path, images_per_s = {}, None, 0.0
        try:
            while self.step < cfg.run.steps:
                batch = next(batches)
                terms = self.train_step(batch)
                self._accumulate(terms)
                if bar is not None:
                    bar.update(1)
                step = self.step
                if step % cfg.run.log_every == 0 or step == cfg.run.steps:
                    values = self._drain()
                    now = time.perf_counter()
                    images_per_s = images_per_step * (step - window_start) / max(now - window_time, 1e-9)
                    window_start, window_time = step, now
                    for name, value in values.items():
                        if not math.isfinite(value):
                            raise FloatingPointError(f"step {step}: loss {name} is {value}; lower the learning "
                                                     f"rates or use optim.amp=none")
                    last = values
                    if info.is_main:
                        record = {"step": step, "time": round(now - start_time, 3),
                                  "images_per_s": round(images_per_s, 3), **values}
                        _append_log(out_dir / LOG_FILE, record)
                        for name, value in values.items():
                            writer.add_scalar(f"loss/{name}", value, step)
                        writer.add_scalar("perf/images_per_s", images_per_s, step)
                        if bar is not None:
                            shown = {k: values[k] for k in ("generator_total", "identity", "reconstruction",
                                                            "adversarial", "discriminator") if k in values}
                            bar.set_postfix({**{k: f"{v:.3g}" for k, v in shown.items()},
                                             "img/s": f"{images_per_s:.2f}"})
                if info.is_main and cfg.run.image_every and step % cfg.run.image_every == 0:
                    xs, xt, y, m = self._last
                    writer.add_image("samples/source|target|result|mask", image_grid(xs, xt, y, m), step)
                if cfg.run.save_every and step % cfg.run.save_every == 0:
                    last_path = self.save()
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        if self.step > start_step and (not cfg.run.save_every or self.step % cfg.run.save_every):
            last_path = self.save()
        elif last_path is None and info.is_main:
            last_path = latest_checkpoint(out_dir)
            last_path = str(last_path) if last_path else None
        seconds = time.perf_counter() - start_time
        return {"step": self.step, "rank": info.rank, "out_dir": str(out_dir), "checkpoint": last_path, "losses": last,
                "images_per_s": images_per_s, "seconds": seconds,
                "mean_images_per_s": images_per_step * (self.step - start_step) / max(seconds, 1e-9)}


def _jsonable_scaler(state: dict) -> dict:
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop the records after `step` (left by a run that went further than the checkpoint being
    resumed), atomically; a fresh run (step 0) starts an empty log."""
    if not path.exists():
        return
    keep = []
    if step > 0:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def train(cfg, *, resume: bool = False, progress: bool = True) -> dict:
    """Train with a TrainConfig (single process, or one DDP rank under torchrun); returns
    :meth:`Trainer.fit`'s summary."""
    info = init_distributed(cfg.run.device)
    try:
        return Trainer(cfg, dist_info=info, progress=progress).fit(resume=resume)
    finally:
        shutdown(info)
