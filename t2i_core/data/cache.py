"""A content-keyed cache of tensors on disk.

The trainer encodes each caption once (key: text-encoder id + caption) and
each image's latent once (key: codec id + image digest + resolution). Keys are
hashes of the content, so a changed file or setting gets a new key and stale
entries are simply never read again; nothing needs invalidating.

One safetensors file per key, in 256 subfolders named by the key's first two
hex digits so no folder grows huge. Entries are written atomically
(t2i_core.files), so a crash mid-write never leaves a half-written entry under
a real key, and processes sharing the folder never read one; a damaged file
is treated as a miss and rewritten.
"""

import hashlib
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..files import atomic_write

KEY = re.compile(r"^[0-9a-f]{64}$")
TENSOR_NAME = "tensor"


class TensorCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"cache directory {self.directory} is a file; give a folder path for the cache")

    @staticmethod
    def key(*parts: str | bytes) -> str:
        """sha256 hex of the parts. Each part is length-prefixed, so ("ab", "c") and ("a", "bc") differ."""
        digest = hashlib.sha256()
        for part in parts:
            if isinstance(part, str):
                part = part.encode("utf-8")
            elif not isinstance(part, (bytes, bytearray)):
                raise TypeError(f"cache key parts must be str or bytes, got {type(part).__name__}; convert numbers with str()")
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        if not isinstance(key, str) or not KEY.match(key):
            raise ValueError(f"not a cache key: {key!r}; make keys with TensorCache.key(...)")
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached tensor (on CPU), or None if absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(path)[TENSOR_NAME]
        except Exception:  # truncated or corrupt file (safetensors raises several types): recompute it
            return None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # safetensors needs a contiguous tensor that owns its memory layout
        tensor = tensor.detach().to("cpu").contiguous()
        atomic_write(path, lambda tmp: save_file({TENSOR_NAME: tensor}, str(tmp)))

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None


def module_digest(module: torch.nn.Module, *extra: str) -> str:
    """A short digest of a module's weights (and `extra` strings): the identity of a frozen encoder,
    under which caches store its outputs."""
    parts: list[str | bytes] = list(extra)
    for name, tensor in sorted(module.state_dict().items()):
        parts += [name, tensor.detach().float().cpu().numpy().tobytes()]
    return TensorCache.key(*parts)[:16]
