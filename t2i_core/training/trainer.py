"""Training a text-conditioned U-Net from a folder of captioned images, with CFG dropout.

One step (Ho et al. 2020; Ho & Salimans 2022):
    x0 = codec.encode(images);  t ~ U{0..T-1};  eps ~ N(0, I);  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    c  = text states of the caption, replaced by the empty prompt's with probability p (CFG dropout)
    loss = w(t) * || model(x_t, t, c) - target ||^2        target = eps, or v for v-prediction
with w(t) = 1, or Min-SNR-gamma weighting (Hang et al. 2023).

Never losing work:
- Randomness is a pure function of (seed, step): data order, timesteps, noise, dropout and augmentation
  of step k come from generators seeded with (seed, k). A run resumed at step k therefore continues
  exactly as the uninterrupted run would, with no RNG state to save.
- `<name>.t2istate` holds what resuming needs, `<name>.safetensors` is the checkpoint to generate with
  (EMA weights); t2i_core.training.state has the files. Both are written atomically, state first, every
  `checkpoint_every` steps, at the end, on cancel and on an exception.
- A NaN/inf loss stops training before the bad step is applied; the last checkpoint stays intact.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import save_checkpoint
from ..codecs import PixelCodec
from ..conditioning import Codec, Conditioning, TextEncoder
from ..data.cache import TensorCache
from ..data.captions import CaptionTable
from ..data.folder import CaptionedImages, augment, fingerprint, gather, load_dataset
from ..data.order import batch_positions, bucket_batch_positions, step_generator
from ..devices import autocast, check_memory, default_device, resolve_precision, reusing_freed_memory
from ..distributed import SINGLE, Distributed
from ..geometry import check_train_size, image_multiple, latent_shape
from ..pipeline import T2IModel
from ..sampler import make_noise, sample
from ..schedule import NoiseSchedule, ScheduleConfig
from ..unet import TextConditionedUNet, preset_config, train_memory_bytes
from .config import Progress, TrainCallbacks, TrainConfig, TrainResult, lr_factor
from .optim import MuonAdamW
from .state import (
    TrainingError,
    TrainingLock,
    TrainState,
    keep_snapshot,
    load_train_state,
    save_train_state,
    state_path,
    write_history_csv,
)
from .tensorboard import TensorBoardLog


def check_writable(output: Path):
    """Fail before training, not after, when the checkpoint cannot be written."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        probe = output.with_name(f".{output.name}.write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write the checkpoint {output}: {e}; choose a folder you can write to") from e


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma)/SNR for eps, min(SNR, gamma)/(SNR + 1) for v."""
    snr = schedule.snr(t)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if schedule.cfg.prediction_type == "epsilon" else clipped / (snr + 1)


class Trainer:
    """One process's trainer. With `dist` (t2i_core.distributed) it is one rank of a data-parallel run: it
    trains on its rows of each global batch, and only rank 0 writes files and calls the callbacks' deciders."""

    def __init__(self, cfg: TrainConfig, text_encoder: TextEncoder, codec: Codec | None = None,
                 device=None, callbacks: TrainCallbacks | None = None, dist: Distributed | None = None):
        self.cfg = cfg
        self.cb = callbacks or TrainCallbacks()
        self.log = self.cb.log or (lambda message: None)
        self.dist = dist or SINGLE
        try:
            self.dist.check_batch(cfg.batch_size)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        device = device if device is not None else self.dist.device
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = resolve_precision(cfg.precision, self.device)
        self.output = Path(cfg.output)
        if self.dist.is_main:
            check_writable(self.output)
        # rank 0 logs; made first, so a missing tensorboard package is reported before any work
        self.board = TensorBoardLog(cfg.log_dir) if cfg.log_dir and self.dist.is_main else None
        self.text_encoder = text_encoder.to(self.device)
        self.codec = (codec or PixelCodec()).to(self.device)

        unet_cfg = preset_config(cfg.preset, in_channels=self.codec.channels, out_channels=self.codec.channels,
                                 context_dim=self.text_encoder.width)
        try:
            self.latent_shape = latent_shape(cfg.resolution, cfg.resolution, channels=self.codec.channels,
                                             codec_factor=self.codec.factor, unet_factor=unet_cfg.downsample_factor,
                                             what=f"the training resolution (preset {cfg.preset}, this codec)")
            check_train_size(cfg.resolution, codec_factor=self.codec.factor, unet_cfg=unet_cfg,
                             allow_large=cfg.allow_large_sizes, override="set allow_large_sizes (TrainConfig, or "
                             "the Train node's input) on")
            rows = cfg.batch_size // self.dist.world_size  # each rank's share of a micro-batch
            _, h, w = self.latent_shape
            check_memory(train_memory_bytes(unet_cfg, h, w, rows), f"training at {cfg.resolution} px with {rows} "
                         "images a step" + (" per process" if self.dist.active else ""), self.device,
                         "Use a smaller resolution or batch_size (grad_accum keeps the images per optimizer step)")
        except ValueError as e:
            raise TrainingError(str(e)) from None
        self.data: CaptionedImages = load_dataset(
            cfg.dataset, cfg.resolution, random_crop=cfg.random_crop, random_flip=cfg.random_flip,
            crop_step=self.codec.factor, buckets={"auto": None, "on": True, "off": False}[cfg.buckets],
            size_factor=image_multiple(self.codec.factor, unet_cfg.downsample_factor), log=self.log)
        self.buckets = self.data.position_buckets  # None: every image is square
        if self.buckets is not None and self.dist.active:
            # a bucket's last batch of an epoch can be smaller than batch_size, so it would not split evenly
            raise TrainingError("aspect-ratio buckets do not yet train with several processes: train with one "
                                "process, or turn buckets off (buckets='off', --buckets off) to centre-crop squares")
        self.cache = TensorCache(cfg.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "t2i-mini"))
        with self.dist.main_first():  # rank 0 encodes into the shared cache, the others then read it
            self.captions = CaptionTable(self.text_encoder, [c for cs in self.data.captions for c in cs],
                                         self.cache, self.device)
            self.latents = self.encode_latents() if not isinstance(self.codec, PixelCodec) else None

        self.schedule = NoiseSchedule(ScheduleConfig(prediction_type=cfg.prediction_type, beta_schedule=cfg.beta_schedule))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.unet = TextConditionedUNet(unet_cfg).to(self.device)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.opt = MuonAdamW(self.unet.named_parameters(), cfg.lr, cfg.optimizer, cfg.weight_decay)
        self.step = 0
        self.history: list[dict] = []
        self.elapsed_s = 0.0
        # held by the writing rank from reading the state to the last save (released by run); a second run on
        # this name is refused
        self.lock = TrainingLock(self.output) if self.dist.is_main else None
        if self.lock is not None:
            self.lock.acquire()
        try:
            self.resume_or_start()
        except BaseException:
            self.release()
            raise
        if self.board is not None:
            self.board.open(self.step)
        # DDP (several ranks) and the compiled module share self.unet's parameters; state dicts are always
        # taken from self.unet
        self.ddp = self.dist.wrap(self.unet)
        self.train_forward = torch.compile(self.ddp) if cfg.compile else self.ddp

    # ---- data ----
    def encode_latents(self) -> torch.Tensor:
        """Each stored image's latent, encoded once and cached by (codec, image content, stored size).

        With random_crop the stored squares are larger than the resolution (by a whole number of latent
        cells), and `batch` crops each step's windows from their latents. With buckets each image has its
        bucket's size, and the latents are a list."""
        out = []
        for i, digest in enumerate(self.data.digests):
            image = self.data.images[i]
            size = str(image.shape[-1]) if self.buckets is None else f"{image.shape[-2]}x{image.shape[-1]}"
            key = TensorCache.key("latent", self.codec.identity, digest, size)
            z = self.cache.get(key)
            if z is None:
                z = self.codec.encode(image[None].float().div(255).to(self.device))[0].cpu()
                self.cache.put(key, z)
            out.append(z)
        return torch.stack(out).to(self.device) if self.buckets is None else [z.to(self.device) for z in out]

    def batch(self, step: int, micro: int):
        """(x0, text, t, noise) of micro-batch `micro` of optimizer step `step`: a function of (seed, step, micro)."""
        cfg = self.cfg
        k = step * cfg.grad_accum + micro
        if self.buckets is None:
            positions = batch_positions(len(self.data), cfg.batch_size, cfg.seed, k)
        else:
            positions = bucket_batch_positions(self.buckets, cfg.batch_size, cfg.seed, k)
        gen = step_generator(cfg.seed, k, 0)
        if self.latents is not None:
            x0 = gather(self.latents, torch.as_tensor(self.data.index)[positions])
            size = self.latent_shape[-1] if self.buckets is None else x0.shape[-1]  # a bucket is stored at its size
            x0 = augment(x0, size, gen, cfg.random_crop, cfg.random_flip)
        else:
            x0 = self.codec.encode(self.data.batch(positions, gen).to(self.device))
        captions = self.data.pick_captions(positions, gen)
        drop = torch.rand(len(captions), generator=gen) < cfg.cfg_dropout
        text = self.captions.lookup(captions, drop)
        t = torch.randint(0, self.schedule.num_train_timesteps, (len(captions),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(*x0.shape[:2], 1, 1, generator=gen)
        return x0, text, t.to(self.device), noise.to(self.device)

    def rank_share(self, x0, text: Conditioning, t, noise):
        """This rank's rows of the global micro-batch (all of it on one process). Every rank draws the whole
        batch, so its randomness stays a function of (seed, step) whatever the number of ranks."""
        if not self.dist.active:
            return x0, text, t, noise
        rows = self.dist.rows(len(t))
        return x0[rows], Conditioning(text.context[rows], text.key_mask[rows]), t[rows], noise[rows]

    # ---- one optimizer step ----
    def loss(self, step: int, micro: int) -> torch.Tensor:
        x0, text, t, noise = self.rank_share(*self.batch(step, micro))
        x_t = self.schedule.q_sample(x0, t, noise)
        with autocast(self.device, self.precision):
            pred = self.train_forward(x_t, t, text.context, text.key_mask)
        per_sample = F.mse_loss(pred.float(), self.schedule.target(x0, t, noise), reduction="none").mean(dim=(1, 2, 3))
        if self.cfg.min_snr_gamma > 0:
            per_sample = per_sample * min_snr_weight(self.schedule, t, self.cfg.min_snr_gamma).to(per_sample)
        return per_sample.mean()

    def train_step(self, budget_spent: float = 0.0) -> float:
        """One optimizer step; budget_spent: the fraction of the time budget spent (lr_factor)."""
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(cfg, self.step, budget_spent)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(cfg.grad_accum):
            # nn.Dropout draws from the global RNG: seed it per step too, for exact resume
            last = micro == cfg.grad_accum - 1  # DDP averages the ranks' gradients in the last backward only
            with torch.random.fork_rng(devices=[]), (contextlib.nullcontext() if last else self.dist.no_sync(self.ddp)):
                torch.manual_seed(step_generator(cfg.seed, self.step, micro + 1).initial_seed())
                loss = self.loss(self.step, micro) / cfg.grad_accum
                loss.backward()
            total += loss.item()
        total = self.dist.mean(total)  # the global batch's loss, the same on every rank
        if not math.isfinite(total):
            raise TrainingError(f"the loss became {total} at step {self.step + 1}; training stopped and the last "
                                f"checkpoint ({self.output}) is kept. Lower the learning rate (now {cfg.lr}) or use "
                                "precision fp32, then resume")
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step += 1
        # EMA with a warm-up, so early validation images aren't dominated by the random init
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.unet.parameters()), 1 - decay)
        return total

    def check_ranks_agree(self):
        """The EMA weights are bit-identical on every rank (DDP gives all ranks the same gradients, hence the same
        steps); rank 0 saves its copy, so a difference would be a bug worth stopping for."""
        if not self.dist.active:
            return
        digests = self.dist.digests(self.ema.state_dict().values())
        if len(set(digests)) > 1:
            raise TrainingError(f"the ranks' EMA weights differ at step {self.step} (sha256 {digests}); the last "
                                f"checkpoint ({self.output}) is kept. Report this with the torch version and backend")
        self.log(f"EMA weights bit-identical on all {self.dist.world_size} ranks (sha256 {digests[0][:16]})")

    # ---- saving and resuming ----
    def model(self) -> T2IModel:
        return T2IModel(self.ema, self.schedule, self.text_encoder, self.codec, self.summary())

    def summary(self) -> dict:
        return {"step": self.step, "config": asdict(self.cfg), "dataset_fingerprint": fingerprint(self.cfg.dataset),
                "images": len(self.data.images), "text_encoder": self.text_encoder.identity,
                # (height, width, images) of each aspect-ratio bucket; None: every image centre-cropped square
                "buckets": None if self.buckets is None else [
                    [h, w, self.data.item_bucket.count(b)] for b, (h, w) in enumerate(self.data.bucket_sizes)],
                "last_loss": self.history[-1]["loss"] if self.history else None, "train_seconds": round(self.elapsed_s, 1)}

    def save(self, wait: bool = True):
        """Rank 0 writes the files; with `wait`, the other ranks wait for it (not after a failure, when a rank
        may be gone)."""
        if self.dist.is_main:
            with self.dist.writing():
                self.write_files()
        if wait:
            self.dist.barrier()

    def write_files(self):
        save_train_state(state_path(self.output), TrainState(
            step=self.step, config=asdict(self.cfg), history=self.history, elapsed_s=self.elapsed_s,
            unet=self.unet.state_dict(), ema=self.ema.state_dict(), optimizer=self.opt.state_dict()))
        save_checkpoint(self.output, self.model(), training=self.summary())
        write_history_csv(self.output, self.history)
        keep_snapshot(self.output, self.step, self.cfg.keep_last)

    def resume_or_start(self):
        path = state_path(self.output)
        if not self.cfg.resume:
            if self.output.exists() or path.exists():
                raise TrainingError(f"{self.output} already exists and resume is off; turn resume on to continue "
                                    "training it, or choose another checkpoint name (nothing was overwritten)")
            return
        if not path.exists():
            if self.output.exists():
                raise TrainingError(f"{self.output} exists but has no training state ({path.name}) to resume from; "
                                    "choose another checkpoint name")
            return
        state = load_train_state(path)
        changed = [f"{k}: {state.config.get(k)!r} -> {getattr(self.cfg, k)!r}" for k in TrainConfig.ARCHITECTURE_FIELDS
                   if state.config.get(k) != getattr(self.cfg, k)]
        if changed:
            raise TrainingError(f"cannot resume {self.output}: it was trained with different settings ({'; '.join(changed)}). "
                                "Use the same settings, or choose another checkpoint name")
        try:
            self.unet.load_state_dict(state.unet)
            self.ema.load_state_dict(state.ema)
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrainingError(f"cannot resume from {path}: {e}; choose another checkpoint name") from e
        if not self.opt.load_if_same(state.optimizer, self.device):
            self.log(f"the optimizer state in {path.name} is another optimizer's (now {self.cfg.optimizer}): its "
                     "moments start again; the weights, EMA and step are kept")
        self.step, self.history, self.elapsed_s = state.step, state.history, state.elapsed_s
        self.log(f"resumed {self.output.name} at step {self.step}")

    # ---- the loop ----
    def validate(self):
        """Validation images from the EMA weights, sampled by rank 0 while the other ranks wait."""
        if self.dist.is_main:
            self.sample_validation()
        self.dist.barrier()

    def sample_validation(self):
        if not self.cfg.validation_prompts or (self.cb.on_validation is None and self.board is None):
            return
        prompts = self.cfg.validation_prompts
        cond = self.text_encoder.encode(prompts).conditioning
        noise = make_noise(range(len(prompts)), self.latent_shape, device=self.device)
        z = sample(self.ema, self.schedule, noise, cond, self.text_encoder.empty(), steps=self.cfg.validation_steps,
                   guidance_scale=self.cfg.validation_guidance, precision=self.precision)
        with torch.inference_mode():
            images = self.codec.decode(z).cpu()
            if self.cb.on_validation is not None:
                self.cb.on_validation(self.step, images)
            if self.board is not None:
                self.board.validation(self.step, images, prompts)

    def release(self):
        """Let go of what the run holds: the checkpoint's lock and the TensorBoard log."""
        if self.lock is not None:
            self.lock.release()
        if self.board is not None:
            self.board.close()

    def run(self) -> TrainResult:
        try:
            # a CPU step frees and takes again the same activations: keep them in the heap (devices.py)
            with reusing_freed_memory() if self.device.type == "cpu" else contextlib.nullcontext():
                return self._run()
        finally:
            self.release()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        stopped = out_of_time = False
        start_step, t0 = self.step, time.perf_counter()
        self.unet.train()
        try:
            while self.step < cfg.steps:
                cancel = self.cb.should_stop is not None and self.cb.should_stop()
                # the budget counts all training time of this checkpoint, resumed runs included
                budget_spent = ((self.elapsed_s + time.perf_counter() - t0) / (cfg.max_minutes * 60)
                                if cfg.max_minutes else 0.0)
                # rank 0's clock and cancel decide for all ranks, and its clock sets the learning rate of all
                cancel, budget_spent = self.dist.agree(float(bool(cancel)), budget_spent)
                cancel, spent = bool(cancel), budget_spent >= 1.0
                if cancel:
                    stopped = True
                    break
                if spent:
                    stopped = out_of_time = True
                    self.log(f"time budget of {cfg.max_minutes:g} min reached at step {self.step}")
                    break
                loss = self.train_step(budget_spent)
                lr = self.opt.param_groups[0]["lr"]
                self.history.append({"step": self.step, "loss": round(loss, 6), "lr": lr})
                if self.cb.on_progress is not None or self.board is not None:
                    done = self.step - start_step
                    rate = done * cfg.batch_size * cfg.grad_accum / max(time.perf_counter() - t0, 1e-9)
                    eta = (cfg.steps - self.step) * cfg.batch_size * cfg.grad_accum / max(rate, 1e-9)
                    if cfg.max_minutes:
                        eta = min(eta, max(0.0, cfg.max_minutes * 60 - self.elapsed_s - (time.perf_counter() - t0)))
                    progress = Progress(self.step, cfg.steps, loss, lr, rate, eta)
                    if self.cb.on_progress is not None:
                        self.cb.on_progress(progress)
                    if self.board is not None:
                        self.board.progress(progress)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.elapsed_s += time.perf_counter() - t0
                    t0, start_step = time.perf_counter(), self.step
                    self.save()
                if cfg.validation_every and self.step % cfg.validation_every == 0 and self.step < cfg.steps:
                    self.validate()
        except TrainingError:
            raise  # NaN: the weights are bad; keep the last good checkpoint
        except BaseException:
            self.elapsed_s += time.perf_counter() - t0
            if self.step > 0:
                self.save(wait=False)  # an unexpected error or interrupt: keep the progress so far
            raise
        self.elapsed_s += time.perf_counter() - t0
        self.unet.eval()
        self.check_ranks_agree()
        self.save()
        if not stopped or out_of_time:
            self.validate()
        return TrainResult(self.model(), self.output, self.step, stopped, self.history, out_of_time)


def train(config: TrainConfig, text_encoder: TextEncoder, codec: Codec | None = None, *, device=None,
          callbacks: TrainCallbacks | None = None, dist: Distributed | None = None) -> TrainResult:
    return Trainer(config, text_encoder, codec, device, callbacks, dist).run()
