"""Text-to-Image Mini as a ComfyUI custom node pack (V3 nodes; workflows in ./workflows).

Only `comfy_entrypoint` (and WEB_DIRECTORY, the frontend extension) is exported: a module that also had
NODE_CLASS_MAPPINGS would be loaded the V1 way and its V3 entrypoint ignored.
"""
if __package__:  # pytest imports this file as a plain module when the checkout's folder name has a hyphen
    try:
        from .nodes import comfy_entrypoint
    except ModuleNotFoundError as error:
        # Outside ComfyUI (pytest imports this file as the repo root's package) there are no nodes to offer;
        # inside ComfyUI comfy_api always exists, so any other import failure still surfaces.
        if error.name != "comfy_api":
            raise

# ComfyUI serves ./web to its own frontend: the live training panel (web/t2i_mini_panel.js), no build step
WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint"]
