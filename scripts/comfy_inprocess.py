"""ComfyUI's own modules in this process, and the pack imported the way ComfyUI imports it (as a package, so
`nodes/`' relative imports work): for unit tests of the adapters in nodes/ that need no server.

ComfyUI is not an installed package: like its main.py, this puts its folder on sys.path, and it selects the
CPU before comfy.model_management is first imported (that module picks its device at import time).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

from .comfy_harness import COMFYUI_DIR, REPO_ROOT, comfyui_is_set_up

PACK = "t2i_mini_inprocess"


def import_pack():
    """The pack's top-level package, with ComfyUI importable; raises RuntimeError when ComfyUI is not set up."""
    if PACK in sys.modules:
        return sys.modules[PACK]
    if not comfyui_is_set_up(COMFYUI_DIR):
        raise RuntimeError(f"ComfyUI is not set up at {COMFYUI_DIR}: run `make setup`")
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.append(str(COMFYUI_DIR))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    # The pack's `..t2i_core` is the t2i_core the tests import: one copy of each module, so objects the tests
    # make are instances of the classes the nodes check for.
    import t2i_core
    for info in pkgutil.walk_packages(t2i_core.__path__, "t2i_core."):
        importlib.import_module(info.name)
    for name, module in list(sys.modules.items()):
        if name == "t2i_core" or name.startswith("t2i_core."):
            sys.modules[f"{PACK}.{name}"] = module
    spec = importlib.util.spec_from_file_location(PACK, Path(REPO_ROOT) / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module


def pack_module(name: str):
    """A module of the pack, e.g. pack_module("nodes.comfy_format")."""
    import_pack()
    return importlib.import_module(f"{PACK}.{name}")


def core_nodes():
    """ComfyUI's own nodes.py (CLIPTextEncode, VAEDecode, KSampler, ...). It is loaded from its file: with the
    repository root on sys.path, `import nodes` would find this pack's nodes/ folder instead."""
    import_pack()
    module = sys.modules.get("nodes")
    if module is None or Path(getattr(module, "__file__", "")).parent != COMFYUI_DIR:
        spec = importlib.util.spec_from_file_location("nodes", COMFYUI_DIR / "nodes.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["nodes"] = module
        spec.loader.exec_module(module)
    return module
