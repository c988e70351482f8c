"""Text-to-Image Mini's ComfyUI nodes (V3 schema). Thin wrappers: each node declares its inputs and calls
t2i_core, which never imports ComfyUI."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import attention, conditioning, datasets, images, loaders, paths, sampling, training, training_runs

paths.register_model_folder()
try:
    from server import PromptServer
    training_runs.register_routes(PromptServer.instance)
except (ImportError, AttributeError):  # ComfyUI's modules without a running server (in-process tests)
    pass


class T2IMiniExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*loaders.NODES, *conditioning.NODES, *sampling.NODES, *attention.NODES, *training.NODES,
                *datasets.NODES, *images.NODES]


async def comfy_entrypoint() -> T2IMiniExtension:
    return T2IMiniExtension()
