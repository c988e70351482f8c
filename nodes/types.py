"""The pack's own socket types, and the inputs that take ComfyUI's types beside them.

T2I_MODEL is a plain PyTorch object (t2i_core.T2IModel), for the pack's own sampler; Load Checkpoint and Train
also hand out the same model as a core MODEL for ComfyUI's samplers (nodes/comfy_model.py). A text-encoder input
takes the pack's T2I_TEXT_ENCODER or a core CLIP, a codec input the pack's T2I_CODEC or a core VAE
(nodes/comfy_parts.py turns the core ones into the engine's interfaces)."""
from comfy_api.latest import io

# t2i_core.T2IModel: U-Net, noise schedule, text encoder and codec
T2IModel = io.Custom("T2I_MODEL")
# a t2i_core.conditioning.TextEncoder: FrozenCLIPTextEncoder, or a checkpoint's record of one it does not hold
TextEncoder = io.Custom("T2I_TEXT_ENCODER")
# a t2i_core.conditioning.Codec (PixelCodec, VAECodec, or a record): images <-> the space the U-Net denoises
Codec = io.Custom("T2I_CODEC")


def text_encoder_input(name: str = "text_encoder", tooltip: str = "") -> io.MultiType.Input:
    return io.MultiType.Input(name, types=[TextEncoder, io.Clip],
                              tooltip=f"{tooltip} A T2I Mini text encoder or a ComfyUI CLIP (CLIPLoader).".strip())


def codec_input(name: str = "codec", tooltip: str = "") -> io.MultiType.Input:
    return io.MultiType.Input(name, types=[Codec, io.Vae],
                              tooltip=f"{tooltip} A T2I Mini codec or a ComfyUI VAE (VAELoader).".strip())

CATEGORY = "T2I Mini"


def combo_error(node_cls, **values) -> str | None:
    """ComfyUI 0.3.75 does not check V3 dropdown values against their options (its check only sees V1-style
    option lists), so nodes call this from validate_inputs. Linked inputs arrive as None and are skipped."""
    options = {i.id: i.options for i in node_cls.define_schema().inputs if isinstance(i, io.Combo.Input)}
    for name, value in values.items():
        if value is None or name not in options or value in options[name]:
            continue
        listed = options[name]
        shown = ", ".join(map(str, listed[:20])) + (f" ... ({len(listed)} in all)" if len(listed) > 20 else "")
        return f"{name}: {value!r} is not one of the choices ({shown or 'none available'})"
    return None
