"""The pack's own socket types. They are distinct from ComfyUI's MODEL/CLIP/VAE on purpose: a T2I Mini model
is a plain PyTorch object, not a ComfyUI ModelPatcher, so core loaders and samplers must not accept it."""
from comfy_api.latest import io

# t2i_core.T2IModel: U-Net, noise schedule, text encoder and codec
T2IModel = io.Custom("T2I_MODEL")
# t2i_core.FrozenCLIPTextEncoder
TextEncoder = io.Custom("T2I_TEXT_ENCODER")
# t2i_core.PixelCodec or t2i_core.VAECodec: the map between images and the space the U-Net denoises
Codec = io.Custom("T2I_CODEC")

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
