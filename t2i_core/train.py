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
- `<name>.t2istate` (safetensors) holds what resuming needs: weights, EMA, optimizer, step, history.
  `<name>.safetensors` is the checkpoint to generate with (EMA weights). Both are written atomically,
  state first, every `checkpoint_every` steps, at the end, on cancel and on an exception.
- A NaN/inf loss stops training before the bad step is applied; the last checkpoint stays intact.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import atomic_save_safetensors, prefixed, save_checkpoint, take
from .codecs import Codec, PixelCodec
from .data.cache import TensorCache, module_digest
from .data.folder import CaptionedImages, fingerprint, load_dataset
from .devices import autocast, default_device, resolve_precision
from .pipeline import T2IModel
from .sampler import make_noise, sample
from .schedule import NoiseSchedule, ScheduleConfig
from .text_encoder import FrozenCLIPTextEncoder
from .unet import PRESETS, TextConditionedUNet, preset_config

STATE_SUFFIX = ".t2istate"


class TrainingError(RuntimeError):
    pass


@dataclass
class TrainConfig:
    dataset: str
    output: str  # the checkpoint to write, e.g. models/t2i_mini/shapes.safetensors
    preset: str = "tiny"
    resolution: int = 16
    steps: int = 1000
    max_minutes: float = 0.0  # training-time budget; 0 = none. Reaching it saves and stops, like a cancel
    batch_size: int = 64
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine"
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0  # 0 disables Min-SNR weighting
    noise_offset: float = 0.0
    # v-prediction: on digits (tiny, 16 px, batch 64, lr 1e-3) 99.5% adherence at w=3 after 300 steps vs 81% for
    # epsilon at 300 and 90.5% at 600, with a lower PCA Frechet distance (the issue-3 note has the runs)
    prediction_type: str = "v_prediction"
    beta_schedule: str = "scaled_linear"
    precision: str = "auto"
    # torch.compile the U-Net's training forward and backward: 1.33x faster steps on an H200 after ~2.5 min of
    # compiling, so for long GPU runs; on this project's CPUs it was slower (docs/PERFORMANCE.md, "GPU")
    compile: bool = False
    seed: int = 0
    resume: bool = True
    checkpoint_every: int = 250
    keep_last: int = 2  # step-numbered snapshots kept beside the checkpoint; 0 keeps none
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 0  # 0: only at the end (when there are prompts)
    validation_steps: int = 20
    validation_guidance: float = 3.0
    random_crop: bool = False
    random_flip: bool = False
    cache_dir: str | None = None  # caption/latent cache; default ~/.cache/t2i-mini

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name in ("steps", "batch_size", "grad_accum", "resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0 = no time budget), got {self.max_minutes}")
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not str(self.output).endswith(".safetensors"):
            raise ValueError(f"output must be a .safetensors path, got {self.output!r}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})

    # What must match for a run to be resumed (changing steps, lr or validation settings is fine).
    ARCHITECTURE_FIELDS = ("preset", "resolution", "prediction_type", "beta_schedule")


@dataclass
class Progress:
    step: int
    total: int
    loss: float
    lr: float
    images_per_s: float
    eta_s: float


@dataclass
class TrainCallbacks:
    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None  # checked every step; True saves and stops
    on_validation: Callable[[int, torch.Tensor], None] | None = None  # (step, images [B,3,H,W] 0..1)
    log: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    model: T2IModel  # with EMA weights
    checkpoint: Path
    step: int
    stopped: bool  # cancelled, or out of time, before config.steps
    history: list[dict]
    out_of_time: bool = False  # stopped because config.max_minutes of training time were spent


def state_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name[: -len(".safetensors")] + STATE_SUFFIX)


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, step, stream): the root of exact resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 16 + stream)


def batch_positions(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Positions of step `step`'s batch in an endless sequence of per-epoch shuffles of range(n)."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=step_generator(seed, epoch, 7))
        out.extend(perm[offset: offset + batch - len(out)].tolist())
    return torch.tensor(out)


def check_writable(output: Path):
    """Fail before training, not after, when the checkpoint cannot be written."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        probe = output.with_name(f".{output.name}.write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write the checkpoint {output}: {e}; choose a folder you can write to") from e


class CaptionTable:
    """Every distinct caption's text states, encoded once (and cached on disk by content), as one padded tensor.

    Row 0 is the empty prompt, which CFG dropout substitutes. Rows are cut to the longest real prompt:
    the key mask hides the rest, so the cut changes no output and saves cross-attention work.
    """

    def __init__(self, encoder: FrozenCLIPTextEncoder, captions: list[str], cache: TensorCache | None, device):
        self.rows = {c: i for i, c in enumerate(dict.fromkeys(["", *captions]))}
        states = []
        for text in self.rows:
            key = TensorCache.key("caption", encoder.identity, text)
            hit = cache.get(key) if cache is not None else None
            if hit is None:
                hit = encoder.encode([text]).conditioning.context[0].cpu()
                if cache is not None:
                    cache.put(key, hit)
            states.append(hit)
        tokens, _ = encoder.tokenize(list(self.rows))
        lengths = (tokens.argmax(-1) + 1).tolist()
        length = max(lengths)
        self.context = torch.stack([s[:length] for s in states]).to(device)
        self.key_mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).to(device)

    def lookup(self, captions: list[str], drop: torch.Tensor):
        rows = torch.tensor([self.rows[c] for c in captions])
        rows = torch.where(drop, torch.zeros_like(rows), rows).to(self.context.device)
        return self.context[rows], self.key_mask[rows]


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma)/SNR for eps, min(SNR, gamma)/(SNR + 1) for v."""
    snr = schedule.snr(t)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if schedule.cfg.prediction_type == "epsilon" else clipped / (snr + 1)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


class Trainer:
    def __init__(self, cfg: TrainConfig, text_encoder: FrozenCLIPTextEncoder, codec: Codec | None = None,
                 device=None, callbacks: TrainCallbacks | None = None):
        self.cfg = cfg
        self.cb = callbacks or TrainCallbacks()
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = resolve_precision(cfg.precision, self.device)
        self.output = Path(cfg.output)
        check_writable(self.output)
        self.text_encoder = text_encoder.to(self.device)
        self.codec = (codec or PixelCodec()).to(self.device)

        log = self.cb.log or (lambda m: None)
        self.data: CaptionedImages = load_dataset(cfg.dataset, cfg.resolution, random_crop=cfg.random_crop,
                                                  random_flip=cfg.random_flip, log=log)
        self.cache = TensorCache(cfg.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "t2i-mini"))
        self.captions = CaptionTable(self.text_encoder, [c for cs in self.data.captions for c in cs], self.cache,
                                     self.device)
        self.latents = self.encode_latents() if not isinstance(self.codec, PixelCodec) else None

        unet_cfg = preset_config(cfg.preset, in_channels=self.codec.channels, out_channels=self.codec.channels,
                                 context_dim=self.text_encoder.width)
        latent_res = cfg.resolution // self.codec.factor
        if cfg.resolution % self.codec.factor or latent_res % unet_cfg.downsample_factor:
            raise TrainingError(f"resolution {cfg.resolution} must be a multiple of "
                                f"{self.codec.factor * unet_cfg.downsample_factor} for preset {cfg.preset} with this codec")
        self.schedule = NoiseSchedule(ScheduleConfig(prediction_type=cfg.prediction_type, beta_schedule=cfg.beta_schedule))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.unet = TextConditionedUNet(unet_cfg).to(self.device)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False).eval()
        # the compiled module shares self.unet's parameters; state dicts are always taken from self.unet
        self.train_forward = torch.compile(self.unet) if cfg.compile else self.unet
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.history: list[dict] = []
        self.elapsed_s = 0.0
        self.resume_or_start()

    # ---- data ----
    def encode_latents(self) -> torch.Tensor:
        """Each image's latent, encoded once and cached by (codec, image content, resolution)."""
        codec_id = module_digest(self.codec, json.dumps(self.codec.spec, sort_keys=True, default=str))
        out = []
        for i, digest in enumerate(self.data.digests):
            key = TensorCache.key("latent", codec_id, digest, str(self.data.resolution))
            z = self.cache.get(key)
            if z is None:
                image = self.data.images[i: i + 1].float().div(255)
                z = self.codec.encode(image.to(self.device))[0].cpu()
                self.cache.put(key, z)
            out.append(z)
        return torch.stack(out).to(self.device)

    def batch(self, step: int, micro: int):
        cfg = self.cfg
        k = step * cfg.grad_accum + micro
        positions = batch_positions(len(self.data), cfg.batch_size, cfg.seed, k)
        gen = step_generator(cfg.seed, k, 0)
        if self.latents is not None:
            x0 = self.latents[torch.as_tensor(self.data.index)[positions].to(self.device)]
            if cfg.random_flip:
                flip = (torch.rand(len(positions), generator=gen) < 0.5).to(self.device)
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        else:
            x0 = self.codec.encode(self.data.batch(positions, gen).to(self.device))
        captions = self.data.pick_captions(positions, gen)
        drop = torch.rand(len(captions), generator=gen) < cfg.cfg_dropout
        context, key_mask = self.captions.lookup(captions, drop)
        t = torch.randint(0, self.schedule.num_train_timesteps, (len(captions),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(*x0.shape[:2], 1, 1, generator=gen)
        return x0, context, key_mask, t.to(self.device), noise.to(self.device)

    # ---- one optimizer step ----
    def loss(self, step: int, micro: int) -> torch.Tensor:
        x0, context, key_mask, t, noise = self.batch(step, micro)
        x_t = self.schedule.q_sample(x0, t, noise)
        with autocast(self.device, self.precision):
            pred = self.train_forward(x_t, t, context, key_mask)
        per_sample = F.mse_loss(pred.float(), self.schedule.target(x0, t, noise), reduction="none").mean(dim=(1, 2, 3))
        if self.cfg.min_snr_gamma > 0:
            per_sample = per_sample * min_snr_weight(self.schedule, t, self.cfg.min_snr_gamma).to(per_sample)
        return per_sample.mean()

    def train_step(self) -> float:
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, self.step)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(cfg.grad_accum):
            # nn.Dropout draws from the global RNG: seed it per step too, for exact resume
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(step_generator(cfg.seed, self.step, micro + 1).initial_seed())
                loss = self.loss(self.step, micro) / cfg.grad_accum
                loss.backward()
            total += loss.item()
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

    # ---- saving and resuming ----
    def model(self) -> T2IModel:
        return T2IModel(self.ema, self.schedule, self.text_encoder, self.codec, self.summary())

    def summary(self) -> dict:
        return {"step": self.step, "config": asdict(self.cfg), "dataset_fingerprint": fingerprint(self.cfg.dataset),
                "images": len(self.data.images), "text_encoder": self.text_encoder.identity,
                "last_loss": self.history[-1]["loss"] if self.history else None, "train_seconds": round(self.elapsed_s, 1)}

    def save(self):
        opt_state = self.opt.state_dict()
        tensors = {**prefixed("unet", self.unet.state_dict()), **prefixed("ema", self.ema.state_dict())}
        for pid, s in opt_state["state"].items():
            for name, value in s.items():
                tensors[f"opt.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        meta = {"format": "t2i-mini-train-state", "step": str(self.step), "config": json.dumps(asdict(self.cfg)),
                "history": json.dumps(self.history), "elapsed_s": str(self.elapsed_s),
                "opt_param_groups": json.dumps(opt_state["param_groups"])}
        atomic_save_safetensors(tensors, meta, state_path(self.output))
        save_checkpoint(self.output, self.model(), ema_state=None, training=self.summary())
        self.write_history_csv()
        self.keep_snapshot()

    def keep_snapshot(self):
        if self.cfg.keep_last <= 0:
            return
        stem = self.output.name[: -len(".safetensors")]
        snapshot = self.output.with_name(f"{stem}-step{self.step:06d}.safetensors")
        if snapshot.exists():
            return
        os.link(self.output, snapshot) if hasattr(os, "link") else snapshot.write_bytes(self.output.read_bytes())
        old = sorted(self.output.parent.glob(f"{stem}-step[0-9]*.safetensors"))
        for path in old[: -self.cfg.keep_last]:
            path.unlink()

    def write_history_csv(self):
        path = self.output.with_name(self.output.name[: -len(".safetensors")] + ".loss.csv")
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "loss", "lr"])
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, path)

    def resume_or_start(self):
        path = state_path(self.output)
        log = self.cb.log or (lambda m: None)
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
        tensors, meta = read_train_state(path)
        saved_cfg = json.loads(meta["config"])
        changed = [f"{k}: {saved_cfg.get(k)!r} -> {getattr(self.cfg, k)!r}" for k in TrainConfig.ARCHITECTURE_FIELDS
                   if saved_cfg.get(k) != getattr(self.cfg, k)]
        if changed:
            raise TrainingError(f"cannot resume {self.output}: it was trained with different settings ({'; '.join(changed)}). "
                                "Use the same settings, or choose another checkpoint name")
        try:
            self.unet.load_state_dict(take(tensors, "unet"))
            self.ema.load_state_dict(take(tensors, "ema"))
            groups = json.loads(meta["opt_param_groups"])
            state: dict = {}
            for key, value in tensors.items():
                if key.startswith("opt."):
                    _, pid, name = key.split(".", 2)
                    state.setdefault(int(pid), {})[name] = value.to(self.device) if name != "step" else value
            self.opt.load_state_dict({"state": state, "param_groups": groups})
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrainingError(f"cannot resume from {path}: {e}; choose another checkpoint name") from e
        self.step = int(meta["step"])
        self.history = json.loads(meta["history"])
        self.elapsed_s = float(meta.get("elapsed_s", 0))
        log(f"resumed {self.output.name} at step {self.step}")

    # ---- the loop ----
    def validate(self):
        if not self.cfg.validation_prompts or self.cb.on_validation is None:
            return
        prompts = self.cfg.validation_prompts
        cond = self.text_encoder.encode(prompts).conditioning
        shape = (self.codec.channels, self.cfg.resolution // self.codec.factor, self.cfg.resolution // self.codec.factor)
        noise = make_noise(range(len(prompts)), shape, device=self.device)
        z = sample(self.ema, self.schedule, noise, cond, self.text_encoder.empty(), steps=self.cfg.validation_steps,
                   guidance_scale=self.cfg.validation_guidance, precision=self.precision)
        with torch.inference_mode():
            self.cb.on_validation(self.step, self.codec.decode(z).cpu())

    def run(self) -> TrainResult:
        cfg = self.cfg
        stopped = out_of_time = False
        start_step, t0 = self.step, time.perf_counter()
        self.unet.train()
        try:
            while self.step < cfg.steps:
                if self.cb.should_stop is not None and self.cb.should_stop():
                    stopped = True
                    break
                # the budget counts all training time of this checkpoint, resumed runs included
                if cfg.max_minutes and self.elapsed_s + time.perf_counter() - t0 >= cfg.max_minutes * 60:
                    stopped = out_of_time = True
                    (self.cb.log or (lambda m: None))(f"time budget of {cfg.max_minutes:g} min reached at step {self.step}")
                    break
                loss = self.train_step()
                lr = self.opt.param_groups[0]["lr"]
                self.history.append({"step": self.step, "loss": round(loss, 6), "lr": lr})
                if self.cb.on_progress is not None:
                    done = self.step - start_step
                    rate = done * cfg.batch_size * cfg.grad_accum / max(time.perf_counter() - t0, 1e-9)
                    eta = (cfg.steps - self.step) * cfg.batch_size * cfg.grad_accum / max(rate, 1e-9)
                    if cfg.max_minutes:
                        eta = min(eta, max(0.0, cfg.max_minutes * 60 - self.elapsed_s - (time.perf_counter() - t0)))
                    self.cb.on_progress(Progress(self.step, cfg.steps, loss, lr, rate, eta))
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
                self.save()  # an unexpected error or interrupt: keep the progress so far
            raise
        self.elapsed_s += time.perf_counter() - t0
        self.unet.eval()
        self.save()
        if not stopped or out_of_time:
            self.validate()
        return TrainResult(self.model(), self.output, self.step, stopped, self.history, out_of_time)


def read_train_state(path: Path):
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open, not a dict)
    except Exception as e:
        raise TrainingError(f"{path} is not a readable training state (corrupt?): {e}; "
                            "choose another checkpoint name") from e
    if meta.get("format") != "t2i-mini-train-state":
        raise TrainingError(f"{path} is not a Text-to-Image Mini training state")
    return tensors, meta


def train(config: TrainConfig, text_encoder: FrozenCLIPTextEncoder, codec: Codec | None = None, *, device=None,
          callbacks: TrainCallbacks | None = None) -> TrainResult:
    return Trainer(config, text_encoder, codec, device, callbacks).run()


def loss_curve_image(history: list[dict], width: int = 512, height: int = 256) -> torch.Tensor:
    """The loss history drawn as an image (3, H, W) in 0..1: raw losses in grey, a moving average in blue."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    pad = 24
    draw.rectangle([pad, pad // 2, width - pad // 2, height - pad], outline="black")
    losses = [h["loss"] for h in history if math.isfinite(h["loss"])]
    if len(losses) >= 2:
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                  for i in range(len(losses))]
        lo, hi = min(losses), max(losses)
        span = hi - lo or 1.0

        def point(i, v):
            x = pad + (width - 1.5 * pad) * i / (len(losses) - 1)
            y = (height - pad) - (height - 1.5 * pad) * (v - lo) / span
            return x, y
        draw.line([point(i, v) for i, v in enumerate(losses)], fill=(190, 190, 190))
        draw.line([point(i, v) for i, v in enumerate(smooth)], fill=(30, 90, 200), width=2)
        draw.text((pad + 4, pad // 2 + 2), f"loss {smooth[-1]:.4f} at step {history[-1]['step']}", fill="black")
        draw.text((2, height - pad + 4), f"{lo:.3g}..{hi:.3g}", fill="black")
    else:
        draw.text((pad + 4, height // 2), "no loss history yet", fill="black")
    return torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1).float() / 255


def main(argv=None):
    """python -m t2i_core.train --dataset DIR --output model.safetensors [--steps N ...]"""
    import argparse

    from .text_encoder import tiny_text_encoder
    p = argparse.ArgumentParser(description="Train a Text-to-Image Mini model from a folder of captioned images.")
    for f in fields(TrainConfig):
        if f.name == "validation_prompts":
            p.add_argument("--validation-prompt", action="append", dest="validation_prompts", default=[])
        elif f.type in ("bool",):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                           default=f.default)
        elif f.name in ("dataset", "output"):
            p.add_argument(f"--{f.name}", required=True)
        else:
            caster = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(f"--{f.name.replace('_', '-')}", type=caster, default=f.default)
    p.add_argument("--text-encoder-seed", type=int, default=0)
    args = vars(p.parse_args(argv))
    encoder = tiny_text_encoder(args.pop("text_encoder_seed"))
    cfg = TrainConfig(**args)

    def show(pr: Progress):
        if pr.step % 25 == 0 or pr.step == pr.total:
            print(f"step {pr.step}/{pr.total} loss {pr.loss:.4f} {pr.images_per_s:.0f} img/s eta {pr.eta_s:.0f}s", flush=True)
    result = train(cfg, encoder, callbacks=TrainCallbacks(on_progress=show, log=print))
    print(f"saved {result.checkpoint} at step {result.step}")


if __name__ == "__main__":
    main()
