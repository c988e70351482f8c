"""Drive a real ComfyUI server that has this pack linked into its custom_nodes.

Plain stdlib + Pillow and no pytest, so scripts (demo, bench) can reuse it.
The module is deliberately not called ``comfy.py``: that name would shadow
ComfyUI's own ``comfy`` package for any in-process test that imports ComfyUI.

Modelled on ComfyUI's tests/execution/test_execution.py, but polls
/history instead of listening on the websocket, which needs no extra
dependency and is plenty for CPU-sized workflows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "t2i_mini"
# T2I_COMFYUI_DIR lets a developer point the tests at another ComfyUI checkout.
COMFYUI_DIR = Path(os.environ.get("T2I_COMFYUI_DIR", REPO_ROOT / ".cache" / "comfyui"))


class ComfyError(AssertionError):
    """A server or workflow failure; the message carries the server log tail."""


class PromptRejected(ComfyError):
    """POST /prompt answered non-200 (usually validation); ``body`` is its JSON."""

    def __init__(self, status: int, body: Any, log_tail: str):
        self.status = status
        self.body = body
        super().__init__(f"/prompt answered {status}: {json.dumps(body, indent=2)}\n{log_tail}")


def comfyui_is_set_up(comfyui_dir: Path = COMFYUI_DIR) -> bool:
    return (comfyui_dir / "main.py").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """One ComfyUI process on 127.0.0.1 with its own base directory.

    The base directory holds custom_nodes/, models/, input/, output/, user/
    and the server log, so nothing touches the shared ComfyUI tree.
    """

    def __init__(
        self,
        base_dir: Path,
        comfyui_dir: Path = COMFYUI_DIR,
        python: str = sys.executable,
        pack_dir: Path = REPO_ROOT,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ):
        self.base_dir = Path(base_dir)
        self.comfyui_dir = Path(comfyui_dir)
        self.python = python
        self.pack_dir = Path(pack_dir)
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})  # set in the server's environment, over this process's
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.log_path = self.base_dir / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def pack_link(self) -> Path:
        return self.base_dir / "custom_nodes" / PACK_NAME

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    # --- lifecycle ------------------------------------------------------

    def start(self, timeout: float = 120.0) -> ComfyServer:
        if not comfyui_is_set_up(self.comfyui_dir):
            raise ComfyError(f"no ComfyUI at {self.comfyui_dir}: run `make setup`")
        self.pack_link.parent.mkdir(parents=True, exist_ok=True)
        if not self.pack_link.is_symlink():
            self.pack_link.symlink_to(self.pack_dir, target_is_directory=True)

        # fmt: off
        cmd = [
            self.python, str(self.comfyui_dir / "main.py"),
            "--cpu",
            "--listen", "127.0.0.1",
            "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            # A file database would be shared between parallel runs and left behind.
            "--database-url", "sqlite:///:memory:",
            *self.extra_args,
        ]
        # fmt: on
        env = {**os.environ, **self.extra_env}
        env["PYTHONUNBUFFERED"] = "1"  # keep the log complete when the server is killed
        # No network here or in CI: make any hub download fail at once instead
        # of retrying until the test times out.
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")

        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.comfyui_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Own process group, so stop() can end any helper it spawns.
                start_new_session=True,
            )
        while True:
            if self.proc.poll() is not None:
                raise ComfyError(
                    f"ComfyUI exited with code {self.proc.returncode} during startup\n" + self.log_tail()
                )
            try:
                self.get_json("/system_stats", timeout=2)
                break
            except (OSError, ComfyError):
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise ComfyError(
                    f"ComfyUI did not answer /system_stats within {timeout:.0f} s\n" + self.log_tail()
                )
            time.sleep(0.25)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # == its process group id, from start_new_session
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- logs -----------------------------------------------------------

    def rss_bytes(self) -> int:
        """The server process's resident memory (Linux /proc)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def pack_import_failures(self) -> list[str]:
        """Log lines where ComfyUI reports that this pack failed to load."""
        # Match the folder name, not the full path: ComfyUI logs the base
        # directory through abspath, which may differ from ours (symlinked /tmp).
        pack = re.compile(rf"custom_nodes[/\\]{re.escape(PACK_NAME)}\b")
        failure = re.compile(r"IMPORT FAILED|Cannot import|comfy_entrypoint in|^Skip ")
        return [line for line in self.log().splitlines() if pack.search(line) and failure.search(line)]

    # --- HTTP -----------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, bytes]:
        """Any HTTP status comes back as (status, raw body); only I/O errors raise."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        status, raw = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyError(f"GET {path} answered {status}: {raw[:500]!r}")
        return json.loads(raw)

    def object_info(self, node_class: str | None = None) -> dict:
        """All node definitions, or just ``node_class``'s (empty dict if unknown)."""
        if node_class is None:
            return self.get_json("/object_info")
        return self.get_json(f"/object_info/{urllib.parse.quote(node_class)}").get(node_class, {})

    def pack_nodes(self) -> dict:
        """The object_info entries that this pack registered."""
        module = f"custom_nodes.{PACK_NAME}"
        return {k: v for k, v in self.object_info().items() if v.get("python_module") == module}

    def workflow_templates(self) -> dict[str, list[str]]:
        """{pack folder name: [template names]} as the Templates dialog sees them."""
        return self.get_json("/api/workflow_templates")

    def post_prompt(self, prompt: dict) -> tuple[int, Any]:
        """POST an API-format workflow; returns (status, JSON body), errors included."""
        status, raw = self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def queue(self, prompt: dict) -> str:
        status, body = self.post_prompt(prompt)
        # ComfyUI answers 200 and runs the valid outputs when only some output nodes fail validation: for a
        # test, any node error is a rejection
        if status != 200 or (isinstance(body, dict) and body.get("node_errors")):
            raise PromptRejected(status, body, self.log_tail())
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0, check: bool = True) -> dict:
        """Poll /history until the prompt finishes; returns its history entry.

        With ``check`` a failed run raises ComfyError with ComfyUI's error
        message and the log tail; pass check=False to inspect failures.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:  # history only lists finished prompts
                break
            if not self.is_running():
                raise ComfyError(f"ComfyUI died while running {prompt_id}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.interrupt()
                raise ComfyError(
                    f"prompt {prompt_id} did not finish within {timeout:.0f} s\n" + self.log_tail()
                )
            time.sleep(0.2)
        if check and (entry.get("status") or {}).get("status_str") != "success":
            raise ComfyError(f"prompt {prompt_id} failed: {execution_error(entry)}\n{self.log_tail()}")
        return entry

    def run(self, prompt: dict, timeout: float = 300.0, check: bool = True) -> dict:
        return self.wait(self.queue(prompt), timeout=timeout, check=check)

    def images(self, entry: dict, node_id: str | None = None) -> list[Image.Image]:
        """The images a finished prompt output (all output nodes, or one), fetched via /view."""
        outputs = entry.get("outputs", {})
        node_outputs = [outputs.get(node_id, {})] if node_id is not None else list(outputs.values())
        result = []
        for out in node_outputs:
            for ref in out.get("images", []):
                query = urllib.parse.urlencode(
                    {
                        "filename": ref["filename"],
                        "subfolder": ref.get("subfolder", ""),
                        "type": ref.get("type", "output"),
                    }
                )
                status, raw = self.request("GET", f"/view?{query}")
                if status != 200:
                    raise ComfyError(f"/view?{query} answered {status}")
                img = Image.open(BytesIO(raw))
                img.load()
                result.append(img)
        return result

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.request("POST", "/free", {"unload_models": unload_models, "free_memory": free_memory})


def execution_error(entry: dict) -> str:
    """ComfyUI's own account of why a prompt failed, from its history entry."""
    for kind, data in (entry.get("status") or {}).get("messages", []):
        if kind == "execution_error":
            return (
                f"{data.get('node_type')} (node {data.get('node_id')}): "
                f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                + "".join(data.get("traceback", []))
            )
        if kind == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')}"
    return f"status {entry.get('status')}"
