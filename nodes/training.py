"""Training a model from a folder of captioned images, inside ComfyUI, and watching a run.

ComfyUI runs nodes under torch.inference_mode(); training leaves it (inference_mode(False) + enable_grad),
as ComfyUI's own TrainLoraNode does. Cancel (ComfyUI's interrupt) is passed to the trainer as should_stop,
so it saves a resumable checkpoint before the node reports the interruption. Stop (the panel's button or the
Training Status node) does the same and the node returns the model saved.

With run_in_background the run trains in a subprocess (nodes/launcher.py) and the node returns at once with
the run's id: the queue goes on, and Training Status (or the panel) follows the run.
"""
from __future__ import annotations

import logging
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from ..t2i_core import PRESETS
from ..t2i_core.data.folder import fingerprint
from ..t2i_core.devices import PRECISIONS
from ..t2i_core.plot import loss_curve_image
from ..t2i_core.training.config import LR_SCHEDULES, Progress, TrainCallbacks, TrainConfig
from ..t2i_core.training.launch import LaunchResult
from ..t2i_core.training.optim import OPTIMIZERS
from ..t2i_core.training.state import TrainingError, TrainingLock
from ..t2i_core.training.tensorboard import TENSORBOARD_INSTALL
from ..t2i_core.training.trainer import train
from . import paths
from .comfy_format import images_to_comfy, preview
from .comfy_model import core_model
from .comfy_parts import as_codec, as_text_encoder, loader_of
from .launcher import train_in_background, train_in_processes
from .training_runs import RUNS, VALIDATION_EVENT, TrainingRun, save_validation_images
from .types import CATEGORY, Node, T2IModel, codec_input, text_encoder_input

log = logging.getLogger("t2i_mini")
TRAINING = f"{CATEGORY}/training"
# The websocket event with each step's numbers (ComfyUI's own "progress" event carries step and total only):
# {"run_id", "node", "prompt_id", "step", "total", "loss", "lr", "images_per_s", "eta_s"}, to the client that queued
# the prompt; the run's history is also kept for GET /t2i_mini/runs/{run_id} (training_runs), so a reloaded page
# or another tab can draw it.
TRAINING_EVENT = "t2i_mini.training"


def prompt_server():
    try:
        from server import PromptServer
        return PromptServer.instance
    except (ImportError, AttributeError):  # no server: the engine used in-process
        return None


def record_progress(run: TrainingRun, p: Progress) -> None:
    point = {"step": p.step, "loss": p.loss, "lr": p.lr, "images_per_s": p.images_per_s, "eta_s": p.eta_s}
    RUNS.add_point(run, point)
    server = prompt_server()
    if server is not None:
        server.send_sync(TRAINING_EVENT, {"run_id": run.id, "node": run.node, "prompt_id": run.prompt_id,
                                          "total": p.total, **point}, run.client)


def record_validation(run: TrainingRun, step: int, images, prompts: list[str]) -> None:
    entry = save_validation_images(run, step, images, prompts, folder_paths.get_temp_directory())
    RUNS.add_validation(run, entry)
    server = prompt_server()
    if server is not None:
        server.send_sync(VALIDATION_EVENT, {"run_id": run.id, "node": run.node, **entry}, run.client)


def finish_background(run: TrainingRun, launched: LaunchResult | None, error: BaseException | None) -> None:
    if error is not None:
        message = str(error) if isinstance(error, TrainingError) else f"{type(error).__name__}: {error}"
        log.error("T2I Mini: background training of %s failed: %s", run.checkpoint, message)
        RUNS.finish(run, "failed", message)
    else:
        log.info("T2I Mini: background training of %s ended at step %d%s", run.checkpoint, launched.step,
                 " (stopped; resumable)" if launched.stopped or launched.out_of_time else "")
        RUNS.finish(run, "stopped" if launched.stopped or launched.out_of_time else "done")


class Train(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniTrain",
            display_name="Train from Dataset",
            category=TRAINING,
            description="Trains a text-conditioned U-Net from scratch on a folder of images with same-name .txt "
                        "captions (or a metadata.jsonl), with CFG dropout, and saves it to models/t2i_mini. Cancel "
                        "and the panel's Stop save a checkpoint that a later run with resume on continues exactly. "
                        "With run_in_background it trains in a subprocess and the queue goes on.",
            inputs=[
                io.Combo.Input("dataset", options=paths.dataset_choices(), default=paths.NO_DATASET,
                               tooltip="A subfolder of ComfyUI's input folder (or of a dataset folder the "
                                       "server's operator allows) holding the images and captions. "
                                       f"'{paths.NO_DATASET}' uses the dataset_path input instead."),
                text_encoder_input(tooltip="The frozen text encoder; the model only understands this encoder, so "
                                           "generate with the same one. Pretrained Text Encoder (MiniLM) knows "
                                           "language, so prompts worded otherwise than the captions work too "
                                           "(docs/QUALITY.md); the Tiny one knows only the captions' words."),
                codec_input(tooltip="Pixel Codec for small CPU models, or a VAE for latent models (latents are "
                                    "encoded once and cached)."),
                io.Combo.Input("preset", options=list(PRESETS), default="tiny",
                               tooltip="U-Net size. micro (1.2M parameters) is for a budget of CPU-minutes at 16 px (the "
                                       "demo); tiny (4.4M) trains on a CPU in minutes at 16 px; tiny-patch2 is tiny "
                                       "reading 2x2-pixel cells, so 32 px costs it what 16 px costs tiny (the sprites "
                                       "at 32 px); small, base and sd are for GPUs."),
                io.Int.Input("steps", default=600, min=1, max=10_000_000,
                             tooltip="Total optimizer steps. With resume on, a finished run continues to this "
                                     "many steps."),
                io.Float.Input("max_minutes", default=0.0, min=0.0, max=100_000.0, step=0.5,
                               tooltip="Training-time budget in minutes, counted over resumed runs too: on reaching "
                                       "it the model is saved and returned as it is. 0: no budget."),
                io.Int.Input("batch_size", default=64, min=1, max=4096, tooltip="Images per step (with processes > 1: all processes together, a multiple of processes)."),
                io.Float.Input("learning_rate", default=0.001, min=0.0000001, max=1.0, step=0.00001,
                               tooltip=f"AdamW's learning rate (after a {TrainConfig.warmup_steps}-step warmup); "
                                       "Muon's is 10x this."),
                io.Combo.Input("lr_schedule", options=list(LR_SCHEDULES), default="constant", optional=True,
                               tooltip="constant: the learning rate stays put after the warmup (a run you may "
                                       "extend later). cosine: it falls to 0 at `steps`, or at the end of "
                                       "max_minutes if that comes first, which gives a better model when the run's "
                                       "length is fixed in advance."),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default=TrainConfig.optimizer, optional=True,
                               tooltip="muon: Muon for the U-Net's hidden weight matrices (each step along the "
                                       "orthogonalised momentum, at 10x learning_rate) and AdamW for the rest; it "
                                       "learned the demo's shapes in half AdamW's steps at about the same cost per "
                                       "step (docs/QUALITY.md, \"Muon\"). adamw: AdamW for every parameter."),
                io.Float.Input("min_snr_gamma", default=TrainConfig.min_snr_gamma, min=0.0, max=100.0, step=0.5,
                               optional=True,
                               tooltip="Min-SNR-gamma loss weighting (5 is the usual value); 0: the plain v loss. "
                                       "The plain loss learns a caption's layout in fewer steps (the 3-minute "
                                       "demo) and which sprite a name means; Min-SNR gives the noisiest steps "
                                       "less weight, which drew the shapes better with tiny from 400 steps on."),
                io.Float.Input("cfg_dropout", default=0.1, min=0.0, max=0.95, step=0.01,
                               tooltip="Share of captions replaced by the empty prompt, so the model also learns "
                                       "the unconditional prediction that guidance needs."),
                io.Int.Input("resolution", default=16, min=4, max=4096, step=4,
                             tooltip="Training image size in pixels (images are resized and centre-cropped); a "
                                     "multiple of the U-Net's factor (4 for tiny) times the codec's."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seed of the weights, data order and noise. A run resumed at step k continues "
                                     "exactly as the uninterrupted run would."),
                io.String.Input("checkpoint_name", default="shapes",
                                tooltip="File name in models/t2i_mini ('.safetensors' is added); may contain "
                                        "subfolders, never '..' or an absolute path."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from the checkpoint's saved training state if it exists. Off: "
                                         "refuse to overwrite an existing checkpoint."),
                io.String.Input("validation_prompts", multiline=True, default="",
                                tooltip="One prompt per line, sampled with the EMA weights at each validation and "
                                        "shown as this node's progress preview."),
                io.Int.Input("validation_every", default=0, min=0, max=10_000_000,
                             tooltip="Validate every N steps (0: only at the end)."),
                io.Int.Input("checkpoint_every", default=250, min=0, max=10_000_000,
                             tooltip="Save a resumable checkpoint every N steps (0: only at the end and on cancel)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="auto: bf16 autocast where the device runs it natively, else fp32."),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="torch.compile the U-Net for training: faster steps on a GPU after "
                                         "a few minutes of compiling, so for long runs; on CPUs usually slower."),
                io.Boolean.Input("allow_large_sizes", default=False, optional=True,
                                 tooltip="Off: refuse a resolution whose largest attention layer has over 4096 "
                                         "positions (128 px for tiny on pixels), with the cost estimate. On: train "
                                         "at it anyway."),
                io.Int.Input("processes", default=1, min=1, max=64, optional=True,
                             tooltip="Data-parallel processes (torch.distributed, one per GPU). 1 trains inside "
                                     "ComfyUI. Above 1, a torchrun subprocess group trains on the GPUs ComfyUI "
                                     "isn't holding (or those in devices), each on batch_size/processes images of "
                                     "every step, so the model is the one a single process would train. On a CPU "
                                     "they share its cores (gloo), which gains little."),
                io.String.Input("devices", default="", optional=True,
                                tooltip="With processes > 1 on CUDA: the GPUs to train on, e.g. '1,2' (as ComfyUI "
                                        "numbers them). Empty: the GPUs ComfyUI isn't holding."),
                io.Boolean.Input("run_in_background", default=False, optional=True,
                                 tooltip="Train in a subprocess and return at once with the run's id: the queue "
                                         "goes on running other prompts while it trains (on a CPU they share its "
                                         "cores). The panel and the Training Status node follow it, and Stop saves "
                                         "and ends it. MODEL and the other outputs stay empty: load the checkpoint."),
                io.String.Input("log_dir", default="", optional=True,
                                tooltip="A TensorBoard log of the run (loss, learning rate, images/s, validation "
                                        "images) in output/t2i_mini_logs/<log_dir>; needs the tensorboard package "
                                        f"({TENSORBOARD_INSTALL}). Empty: no log."),
                io.String.Input("dataset_path", optional=True, force_input=True,
                                tooltip="A dataset folder: a subfolder of ComfyUI's input folder (by name, or its "
                                        "absolute path as Make Dataset gives it) or of a folder the server's "
                                        "operator allows; overrides the dataset dropdown."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[
                T2IModel.Output(display_name="MODEL", tooltip="The trained model (EMA weights), ready to sample."),
                io.Image.Output(display_name="loss_curve", tooltip="The training loss over the steps, as an image."),
                io.Int.Output(display_name="steps", tooltip="The step the model was saved at."),
                io.Model.Output(display_name="CORE_MODEL",
                                tooltip="The trained model as a core MODEL, for KSampler and ComfyUI's other "
                                        "samplers."),
                io.String.Output(display_name="run_id",
                                 tooltip="The run's id, for the Training Status node."),
            ],
        )

    @classmethod
    def validate_inputs(cls, checkpoint_name, log_dir=""):
        try:
            if checkpoint_name is not None:  # linked: checked when the node runs
                paths.checkpoint_output_path(checkpoint_name)
            if log_dir:
                paths.log_folder(log_dir)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, dataset=None, dataset_path=None, run_in_background=False, **_):
        # Re-run when the dataset's files change. (A dataset_path that comes from another node is not known
        # here; that node's own inputs decide then.) A background run's outputs say nothing of the run's end,
        # so queueing it again always starts (or resumes) a run.
        if run_in_background:
            return float("nan")
        try:
            return fingerprint(paths.dataset_folder(dataset, dataset_path))
        except Exception as e:  # a missing folder is reported when the node runs
            return f"unavailable: {e}"

    @classmethod
    def execute(cls, dataset, text_encoder, codec, preset, steps, max_minutes, batch_size, learning_rate,
                cfg_dropout, resolution, seed, checkpoint_name, resume, validation_prompts, validation_every,
                checkpoint_every, precision, compile=False, allow_large_sizes=False, processes=1, devices="",
                lr_schedule="constant", min_snr_gamma=TrainConfig.min_snr_gamma, run_in_background=False, log_dir="",
                dataset_path=None, optimizer=TrainConfig.optimizer) -> io.NodeOutput:
        folder = paths.dataset_folder(dataset, dataset_path)
        output = paths.checkpoint_output_path(checkpoint_name)
        config = TrainConfig(
            dataset=str(folder), output=str(output), preset=preset, resolution=resolution, steps=steps,
            max_minutes=max_minutes, batch_size=batch_size, lr=learning_rate, cfg_dropout=cfg_dropout, seed=seed,
            resume=resume,
            validation_prompts=[p.strip() for p in validation_prompts.splitlines() if p.strip()],
            validation_every=validation_every, checkpoint_every=checkpoint_every, precision=precision,
            compile=compile, allow_large_sizes=allow_large_sizes, lr_schedule=lr_schedule, optimizer=optimizer,
            min_snr_gamma=min_snr_gamma, log_dir=str(paths.log_folder(log_dir)) if log_dir.strip() else None)

        # a core CLIP or VAE is recorded in the checkpoint by the loader node and file it came from
        text_encoder = as_text_encoder(text_encoder, loader_of(cls.hidden, "text_encoder"))
        codec = as_codec(codec, loader_of(cls.hidden, "codec"))
        server = prompt_server()
        node, prompt_id, client = (getattr(cls.hidden, "unique_id", None), getattr(server, "last_prompt_id", None),
                                   getattr(server, "client_id", None))
        if run_in_background:
            return cls.start_in_background(config, text_encoder, codec, processes, devices or "", node, prompt_id,
                                           client)
        mm.unload_all_models()
        mm.soft_empty_cache()
        pbar = comfy.utils.ProgressBar(steps)
        cancelled = []  # set when the progress hook consumed ComfyUI's interrupt flag

        def report(step: int, image=None):
            try:
                pbar.update_absolute(step, steps, image)
            except mm.InterruptProcessingException:
                cancelled.append(step)

        run = RUNS.start(node, prompt_id, output.name, steps, output=output, client=client)

        def progress(p: Progress):
            report(p.step)
            record_progress(run, p)

        def validation(step: int, images):
            report(step, preview(images))
            record_validation(run, step, images, config.validation_prompts)

        callbacks = TrainCallbacks(
            on_progress=progress,
            should_stop=lambda: bool(cancelled) or mm.processing_interrupted() or run.stop_requested,
            on_validation=validation,
            log=lambda message: log.info("T2I Mini: %s", message),
        )
        log.info("T2I Mini: training %s on %s (%d steps)", output.name, folder, steps)
        try:
            if processes > 1:
                result = train_in_processes(config, text_encoder, codec, processes, devices or "", callbacks)
            else:
                with torch.inference_mode(False), torch.enable_grad():
                    result = train(config, text_encoder, codec, device=mm.get_torch_device(), callbacks=callbacks)
        except BaseException as e:
            RUNS.finish(run, "failed", str(e))
            raise
        RUNS.finish(run, "stopped" if result.stopped else "done")
        if result.out_of_time:
            log.info("T2I Mini: the %g-minute budget ended training at step %d of %d; %s is resumable",
                     max_minutes, result.step, steps, result.checkpoint)
        elif result.stopped:
            log.info("T2I Mini: %s at step %d; %s holds a resumable checkpoint (queue again with resume on)",
                     "stopped" if run.stop_requested else "cancelled", result.step, result.checkpoint)
            if not run.stop_requested:  # Cancel ends the prompt; Stop hands on the model saved
                mm.throw_exception_if_processing_interrupted()  # clears ComfyUI's flag, reports the interruption
                raise mm.InterruptProcessingException()

        curve = images_to_comfy(loss_curve_image(result.history)[None]).to(mm.intermediate_device())
        return io.NodeOutput(result.model, curve, result.step, core_model(result.model), run.id,
                             ui=ui.PreviewImage(curve, cls=cls))

    @classmethod
    def start_in_background(cls, config: TrainConfig, text_encoder, codec, processes: int, devices: str, node,
                            prompt_id, client) -> io.NodeOutput:
        output = Path(config.output)
        TrainingLock(output).check_free()  # another process's run: refused now, not later in the subprocess
        run = RUNS.start(node, prompt_id, output.name, config.steps, output=output, client=client, background=True)
        callbacks = TrainCallbacks(
            on_progress=lambda p: record_progress(run, p),
            should_stop=lambda: run.stop_requested,  # ComfyUI's Cancel is for the prompts queued meanwhile
            on_validation=lambda step, images: record_validation(run, step, images, config.validation_prompts),
            log=lambda message: log.info("T2I Mini (background %s): %s", output.name, message),
        )
        try:
            train_in_background(config, text_encoder, codec, processes, devices, callbacks,
                                lambda launched, error: finish_background(run, launched, error))
        except BaseException as e:
            RUNS.finish(run, "failed", str(e))
            raise
        log.info("T2I Mini: training %s in the background (run %s, %d steps)", output.name, run.id, config.steps)
        blocked = ExecutionBlocker(None)  # no model yet: nodes that need one wait for a later prompt
        return io.NodeOutput(blocked, blocked, blocked, blocked, run.id,
                             ui=ui.PreviewText(f"training {output.name} in the background: run {run.id}"))


def status_text(run: dict) -> str:
    """One run's state in a line or two, as the Training Status node shows it."""
    text = f"{run['checkpoint']}: {run['status']}, step {run['step']} of {run['total']}"
    if run["points"]:
        last = run["points"][-1]
        text += f", loss {last['loss']:.4g}, {last['images_per_s']:.0f} images/s"
        if run["status"] == "running":
            text += f", about {last['eta_s'] / 60:.1f} min left"
    if run.get("error"):
        text += f"\n{run['error']}"
    return text


class TrainingStatus(Node):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="T2IMiniTrainingStatus",
            display_name="Training Status",
            category=TRAINING,
            description="Shows how a training run of this server is going (a background run above all): its state, "
                        "step and loss curve so far. Queue it again to look again; stop asks the run to save a "
                        "resumable checkpoint and end.",
            inputs=[
                io.String.Input("run_id", default="",
                                tooltip="The run's id, from the Train node's run_id output or the panel. Empty: "
                                        "the newest run of this server."),
                io.Boolean.Input("stop", default=False,
                                 tooltip="On: ask the run to save a resumable checkpoint and end (as the panel's "
                                         "Stop does)."),
            ],
            outputs=[
                io.String.Output(display_name="status", tooltip="running, stopping, done, stopped or failed, with "
                                                                 "the step, loss and speed (and why, if it failed)."),
                io.Int.Output(display_name="step", tooltip="The run's latest step."),
                io.Image.Output(display_name="loss_curve", tooltip="The loss so far, as an image."),
            ],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **_):
        return float("nan")  # a run moves on between two queues: always look again

    @classmethod
    def execute(cls, run_id, stop) -> io.NodeOutput:
        run = RUNS.get(run_id.strip())
        if run is None:
            raise ValueError(f"no training run {run_id!r} was started by this server" if run_id.strip() else
                             "this server has started no training run yet; queue a Train from Dataset node")
        if stop:
            RUNS.request_stop(run.id)
        history = RUNS.history(run.id)
        text = status_text(history)
        curve = images_to_comfy(loss_curve_image(history["points"])[None]).to(mm.intermediate_device())
        return io.NodeOutput(text, history["step"], curve,
                             ui={**ui.PreviewImage(curve, cls=cls).as_dict(), **ui.PreviewText(text).as_dict()})


NODES = [Train, TrainingStatus]
