"""Writing and reading the engine's files: one atomic writer, one checked safetensors reader, one state-dict check.

Every file the engine writes (checkpoints, training states, loss histories, cache entries) goes through
`atomic_write`: the bytes go to a temporary file in the same folder, are flushed to disk, and the temporary
file is renamed over the target. A crash, a kill or a full disk mid-write therefore leaves either the old
file or the new one, never a half-written file under the real name.
"""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write `path` by calling `write(temporary_path)`, then renaming the temporary file over `path`.

    The file gets the permissions the user's umask gives any new file (mkstemp alone would leave 0600, which
    a ComfyUI running as a service user and a person copying models could not share). A full disk is reported
    as such, naming the file; the previous file at `path`, if any, is untouched.
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException as e:
        temporary.unlink(missing_ok=True)
        full = _disk_full_errno(e)
        if full is not None:
            raise OSError(full, f"the disk is full: could not write {path} ({os.strerror(full)}); the previous file "
                                "is intact. Free some space, then run again") from e
        raise
    return path


def _disk_full_errno(error: BaseException) -> int | None:
    """ENOSPC or EDQUOT when `error` says the disk is full: an OSError, or a writer's own error that carries
    the OS's code in its text (safetensors' Rust writer raises SafetensorError "... (os error 28)")."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, OSError) and error.errno in codes:
        return error.errno
    text = str(error)
    return next((code for code in codes if f"(os error {code})" in text), None)


def save_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | os.PathLike) -> Path:
    """A .safetensors file with string metadata, written atomically."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_safetensors(path: str | os.PathLike, *, expected_format: str, what: str,
                     error: type[Exception] = ValueError) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file whose metadata says format=`expected_format`.

    Raises `error` naming the file and the problem for a missing, unreadable (corrupt, truncated) or foreign
    file; `what` names the kind of file in those messages ("checkpoint", "training state").
    """
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open, not a dict)
    except Exception as e:  # safetensors raises several types for damaged files
        raise error(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e
    if metadata.get("format") != expected_format:
        raise error(f"{path} is not a Text-to-Image Mini {what} (its metadata has no format={expected_format!r})")
    return tensors, metadata


def state_dict_problems(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """What keeps `given` from loading into a module whose state dict is `expected`: missing and unexpected
    keys and shape mismatches, a few of each (empty when it fits)."""
    name = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)  # noqa: E731
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [f"{name(k)} is {tuple(given[k].shape)}, expected {tuple(v.shape)}"
             for k, v in expected.items() if k in given and given[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys {[name(k) for k in missing[:5]]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {[name(k) for k in unexpected[:5]]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:3]))
    return problems


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def take(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.`, with the prefix removed (the inverse of `prefixed`)."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
