"""The training runs this server started, in memory, and the routes the live training panel uses.

    GET  /t2i_mini/runs                 {"runs": [summary, ...]}: the runs of this server, newest first
    GET  /t2i_mini/runs/{run_id}        one run's history so far: its loss, learning rate and speed per step, and
                                        its validation images (ComfyUI temp-folder entries that /view serves)
    POST /t2i_mini/runs/{run_id}/stop   ask a running run to save a resumable checkpoint and end, as Cancel does

A run id is a random hex string the server made, so a route never takes a path or a file name from the
request, names no server folder and lists none. The store is bounded (MAX_RUNS runs; a run's points thinned to
every other one past MAX_POINTS), so a long-lived server's memory stays flat. The loss history also stays in
the loss CSV beside the checkpoint (t2i_core.training.state.write_history_csv).
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..t2i_core.training.state import TrainingError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_RUNS = 32
MAX_POINTS = 4000
MAX_VALIDATIONS = 6  # the latest few validation rounds: the panel shows the newest
VALIDATION_EVENT = "t2i_mini.validation"


@dataclass
class TrainingRun:
    id: str
    node: str | None
    prompt_id: str | None
    checkpoint: str  # the checkpoint's file name, never its folder
    total: int
    started: float = field(default_factory=time.time)
    status: str = "running"  # running, done, stopped (cancel or time budget), failed
    points: list[dict] = field(default_factory=list)  # {"step", "loss", "lr", "images_per_s", "eta_s"}
    validations: list[dict] = field(default_factory=list)  # {"step", "images": [{"filename", "subfolder", "type", "prompt"}]}
    background: bool = False  # started by run_in_background: the queue went on while it trains
    stop_requested: bool = False  # Stop from the panel or the Training Status node
    error: str | None = None  # why a failed run failed
    # kept on the server only, never in a route's answer: the checkpoint's path and the client that queued it
    output: str | None = field(default=None, repr=False)
    client: str | None = field(default=None, repr=False)

    def summary(self) -> dict:
        last = self.points[-1] if self.points else {}
        return {"id": self.id, "node": self.node, "prompt_id": self.prompt_id, "checkpoint": self.checkpoint,
                "status": "stopping" if self.status == "running" and self.stop_requested else self.status,
                "step": last.get("step", 0), "total": self.total, "started": self.started,
                "background": self.background, "error": self.error}

    def history(self) -> dict:
        return {**self.summary(), "points": list(self.points), "validations": list(self.validations)}


class RunStore:
    def __init__(self, max_runs: int = MAX_RUNS, max_points: int = MAX_POINTS):
        self.max_runs, self.max_points = max_runs, max_points
        self._runs: dict[str, TrainingRun] = {}
        self._lock = threading.Lock()  # the training thread writes while the server's event loop reads

    def start(self, node, prompt_id, checkpoint: str, total: int, *, output=None, client=None,
              background=False) -> TrainingRun:
        """A new running run. TrainingError if a run of this server still trains `output` (a background run's
        subprocess may not hold the checkpoint's lock yet)."""
        run = TrainingRun(uuid.uuid4().hex, None if node is None else str(node), prompt_id, checkpoint, total,
                          background=background, output=None if output is None else str(output), client=client)
        with self._lock:
            busy = [r for r in self._runs.values() if r.status == "running" and output is not None
                    and r.output == run.output]
            if busy:
                raise TrainingError(f"{checkpoint} is being trained by run {busy[0].id} of this server; wait for it "
                                   "to finish or stop it (the panel's Stop, or the Training Status node), or choose "
                                   "another checkpoint name")
            self._runs[run.id] = run
            while len(self._runs) > self.max_runs:  # the oldest run goes first
                self._runs.pop(next(iter(self._runs)))
        return run

    def add_point(self, run: TrainingRun, point: dict) -> None:
        with self._lock:
            run.points.append(point)
            if len(run.points) > self.max_points:
                run.points[:] = run.points[::2]

    def add_validation(self, run: TrainingRun, entry: dict) -> None:
        with self._lock:
            run.validations.append(entry)
            del run.validations[:-MAX_VALIDATIONS]

    def finish(self, run: TrainingRun, status: str, error: str | None = None) -> None:
        with self._lock:
            run.status, run.error = status, error

    def get(self, run_id: str) -> TrainingRun | None:
        """The run `run_id` (None for an id this server did not hand out; ValueError for text that is no run id);
        an empty id is the newest run."""
        with self._lock:
            if not (run_id or "").strip():
                return next(reversed(self._runs.values()), None)
            self._check_id(run_id)
            return self._runs.get(run_id)

    def request_stop(self, run_id: str) -> TrainingRun | None:
        """Ask run `run_id` to save and end (a run that already ended stays as it is)."""
        self._check_id(run_id)
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None and run.status == "running":
                run.stop_requested = True
            return run

    def summaries(self) -> list[dict]:
        with self._lock:
            return [r.summary() for r in reversed(self._runs.values())]

    def history(self, run_id: str) -> dict | None:
        """The run's history, or None for an id this server did not hand out. ValueError for text that is no
        run id at all (a path, say)."""
        self._check_id(run_id)
        with self._lock:
            run = self._runs.get(run_id)
            return None if run is None else run.history()

    @staticmethod
    def _check_id(run_id: str) -> None:
        if not RUN_ID.match(run_id or ""):
            raise ValueError("a run id is 32 hex digits, as GET /t2i_mini/runs lists them")


RUNS = RunStore()


def save_validation_images(run: TrainingRun, step: int, images, prompts: list[str], temp_folder: str) -> dict:
    """Write a validation round's images [B, 3, H, W] in 0..1 into ComfyUI's temp folder as PNGs; returns the
    round's entry, naming each image as ComfyUI's /view route takes it."""
    folder = Path(temp_folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (np.asarray(images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1)) * 255).round().astype(np.uint8)
    entries = []
    for i, (image, prompt) in enumerate(zip(pixels, prompts)):
        name = f"t2i_mini_validation_{run.id}_{step:07d}_{i:02d}.png"
        Image.fromarray(image).save(folder / name)
        entries.append({"filename": name, "subfolder": "", "type": "temp", "prompt": prompt})
    return {"step": step, "images": entries}


def register_routes(server) -> None:
    """Add the routes to ComfyUI's PromptServer (once)."""
    from aiohttp import web

    if getattr(server, "_t2i_mini_runs_routes", False):
        return
    server._t2i_mini_runs_routes = True

    @server.routes.get("/t2i_mini/runs")
    async def list_runs(request):
        return web.json_response({"runs": RUNS.summaries()})

    @server.routes.get("/t2i_mini/runs/{run_id}")
    async def run_history(request):
        return answer(RUNS.history, request.match_info["run_id"], lambda history: history)

    @server.routes.post("/t2i_mini/runs/{run_id}/stop")
    async def stop_run(request):
        return answer(RUNS.request_stop, request.match_info["run_id"], TrainingRun.summary)

    def answer(lookup, run_id: str, as_json):
        """lookup(run_id) as JSON: 400 for text that is no run id, 404 for an id this server did not hand out."""
        try:
            found = lookup(run_id)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        if found is None:
            return web.json_response({"error": "no run with this id was started by this server (runs live in the "
                                               "server's memory until it restarts)"}, status=404)
        return web.json_response(as_json(found))
