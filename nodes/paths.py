"""Where the pack reads and writes files inside ComfyUI: our model folder, datasets, VAEs, text encoders.

`models/t2i_mini/` is registered with ComfyUI's folder_paths (so extra_model_paths.yaml may add more
folders under the key `t2i_mini`). Every name that comes from a workflow is resolved here, and a name
that would leave its folder (`../x`, an absolute path, a symlink pointing out) is refused.

Datasets are read from inside ComfyUI's input folder only, as ComfyUI's own loaders read inputs, and from the
folders the server's operator allows on purpose: extra_model_paths.yaml entries under the key
`t2i_mini_datasets`, or the T2I_MINI_DATASET_ROOTS environment variable (os.pathsep-separated). A workflow can
never widen that set, and an error about a refused path names the path and the rule, never what a folder
outside those roots holds.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import folder_paths

from ..t2i_core.text_encoder import MINILM_NAME
from ..t2i_core.training.state import SNAPSHOT_FOLDER

MODEL_FOLDER = "t2i_mini"  # the folder_paths key and the folder name under models/
CHECKPOINT_EXTENSION = ".safetensors"
NO_DATASET = "(connect dataset_path)"  # the dataset dropdown's entry for "use the dataset_path input"
DATASET_ROOTS_KEY = "t2i_mini_datasets"  # folder_paths key: dataset roots from extra_model_paths.yaml
DATASET_ROOTS_ENV = "T2I_MINI_DATASET_ROOTS"  # dataset roots from the environment, os.pathsep-separated


def register_model_folder() -> None:
    """Add `models/t2i_mini` (.safetensors only) to folder_paths, keeping any paths a user configured."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    entry = folder_paths.folder_names_and_paths.get(MODEL_FOLDER)
    paths = list(entry[0]) if entry else []
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, {CHECKPOINT_EXTENSION})
    # the operator's extra dataset roots (none by default): extra_model_paths.yaml may list them under this key
    roots = folder_paths.folder_names_and_paths.get(DATASET_ROOTS_KEY)
    folder_paths.folder_names_and_paths[DATASET_ROOTS_KEY] = (list(roots[0]) if roots else [], set())


def model_dir() -> Path:
    """The folder new checkpoints are written to (the first registered one)."""
    return Path(folder_paths.get_folder_paths(MODEL_FOLDER)[0])


def checkpoint_names() -> list[str]:
    """The finished models: step-numbered snapshots (in a `snapshots/` folder) are left out."""
    return [name for name in folder_paths.get_filename_list(MODEL_FOLDER)
            if SNAPSHOT_FOLDER not in PurePosixPath(name.replace("\\", "/")).parts[:-1]]


def checkpoint_path(name: str) -> Path:
    """The existing checkpoint `name` from the model folder's dropdown."""
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"checkpoint {name!r} is not in {model_dir()} (the models/{MODEL_FOLDER} folder); "
                                "train one with the Train from Dataset node or copy a .safetensors file there")
    return Path(path)


def _leaves_folder(name: str) -> bool:
    posix = name.replace("\\", "/")
    return (PurePosixPath(posix).is_absolute() or re.match(r"^[A-Za-z]:", posix) is not None
            or ".." in PurePosixPath(posix).parts)


def _name_inside(root: Path, name: str, what: str, folder: str, example: str) -> Path:
    """`root / name` for a name from a workflow, resolved; ValueError naming `what` and the fix for an empty name
    or one that leaves `root` ('..', an absolute path, a symlinked subfolder pointing out)."""
    if not name:
        raise ValueError(f"{what} is empty; give a name such as '{example}'")
    if _leaves_folder(name):
        raise ValueError(f"{what} {name!r} would leave {folder}; use a plain name such as '{example}' (no '..', no "
                         "absolute path)")
    root = root.resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise ValueError(f"{what} {name!r} resolves to {path}, outside {folder} {root}")
    return path


def checkpoint_output_path(name: str) -> Path:
    """Where the training node writes checkpoint `name` ("shapes", "runs/shapes.safetensors"), inside the model
    folder. Raises ValueError naming the problem for an empty name or one that would leave the folder."""
    name = (name or "").strip()
    if name and not name.endswith(CHECKPOINT_EXTENSION):
        name += CHECKPOINT_EXTENSION
    return _name_inside(model_dir(), name, "checkpoint_name", f"the models/{MODEL_FOLDER} folder", "shapes")


LOG_FOLDER = "t2i_mini_logs"  # TensorBoard logs go under ComfyUI's output folder, in this subfolder


def log_folder(name: str) -> Path:
    """The TensorBoard log folder `name` of a run: output/t2i_mini_logs/<name>, never outside it."""
    return _name_inside(Path(folder_paths.get_output_directory()) / LOG_FOLDER, (name or "").strip(), "log_dir",
                        f"the output/{LOG_FOLDER} folder", "shapes")


def extra_dataset_roots() -> list[Path]:
    """The dataset folders the operator allowed besides ComfyUI's input folder, resolved (symlinks followed)."""
    entry = folder_paths.folder_names_and_paths.get(DATASET_ROOTS_KEY)
    configured = list(entry[0]) if entry else []
    configured += [p for p in os.environ.get(DATASET_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return list(dict.fromkeys(Path(p.strip()).expanduser().resolve() for p in configured))


def dataset_choices() -> list[str]:
    """The dataset dropdown: "use dataset_path", every subfolder of ComfyUI's input folder, then the subfolders
    of the operator's extra dataset roots as absolute paths."""
    extra = []
    for root in extra_dataset_roots():
        if root.is_dir():
            extra += [str(root)] + sorted(str(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [NO_DATASET, *folder_paths.get_input_subfolders(), *extra]


DATASET_RULE = ("datasets are read only from inside ComfyUI's input folder, or from a folder the server's "
                f"operator allows (extra_model_paths.yaml key '{DATASET_ROOTS_KEY}', or the {DATASET_ROOTS_ENV} "
                "environment variable)")
DATASET_FIX = "put the dataset in a subfolder of ComfyUI's input folder and give that subfolder's name"


def dataset_folder(choice: str | None, path: str | None) -> Path:
    """The dataset folder from the node's inputs: a non-empty dataset_path wins over the dropdown.

    A relative name is a subfolder of ComfyUI's input folder; an absolute path must lie in the input folder or
    in one of the operator's extra dataset roots (Make Dataset hands on the absolute path of an input subfolder).
    The resolved path (symlinks followed) is checked, so a link inside input/ cannot lead elsewhere. Raises
    ValueError naming the input, the rule and the fix; the message is the same whether the path exists or not.
    """
    if path is not None and str(path).strip():
        what, name = "dataset_path", str(path).strip()
    elif choice in (None, "", NO_DATASET):
        raise ValueError("no dataset: pick a folder of ComfyUI's input directory in 'dataset', or connect "
                         "'dataset_path' (for example from the Make Dataset node)")
    else:
        what, name = "dataset", choice
    input_dir = Path(folder_paths.get_input_directory()).resolve()
    posix = name.replace("\\", "/")
    if ".." in PurePosixPath(posix).parts:
        raise ValueError(f"{what} {name!r} contains '..': {DATASET_RULE}; {DATASET_FIX}")
    given = Path(name).expanduser()
    absolute = given.is_absolute() or re.match(r"^[A-Za-z]:", posix) is not None
    folder = (given if absolute else input_dir / given).resolve()
    roots = [input_dir, *extra_dataset_roots()]
    if any(folder == root or root in folder.parents for root in roots):
        return folder
    if not absolute:  # inside input/ as written, so a symlink leads out: say so, not where it leads
        raise ValueError(f"{what} {name!r} is a link that leads outside ComfyUI's input folder: {DATASET_RULE}; "
                         f"{DATASET_FIX}")
    raise ValueError(f"{what} {name!r} is outside the allowed dataset folders: {DATASET_RULE}; {DATASET_FIX} "
                     "(for example 'my_dataset'), or ask the operator to allow the folder")


def input_subfolder(name: str) -> Path:
    """A new or existing subfolder `name` of ComfyUI's input folder (for the Make Dataset node)."""
    return _name_inside(Path(folder_paths.get_input_directory()), (name or "").strip(), "folder_name",
                        "ComfyUI's input folder", "t2i_shapes")


# ---- VAEs (single files and diffusers folders under models/vae) and text encoders (models/text_encoders) ----

def _config_folders(kind: str) -> dict[str, Path]:
    """The subfolders of ComfyUI's `kind` model folders (vae, text_encoders) that hold a config.json: the
    Hugging Face layout, listed as 'name/'."""
    found = {}
    for root in folder_paths.get_folder_paths(kind):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if "config.json" in filenames and dirpath != root:
                found[Path(os.path.relpath(dirpath, root)).as_posix() + "/"] = Path(dirpath)
                dirnames[:] = []  # a diffusers folder's own subfolders are part of it
    return found


def vae_choices() -> list[str]:
    """Files in models/vae (outside diffusers folders), then diffusers folders, shown as 'name/'."""
    folders = _config_folders("vae")
    files = [f for f in folder_paths.get_filename_list("vae")
             if not any(f.replace("\\", "/").startswith(d) for d in folders)]
    return sorted(files) + sorted(folders)


def vae_path(choice: str) -> Path:
    folders = _config_folders("vae")
    if choice in folders:
        return folders[choice]
    path = folder_paths.get_full_path("vae", choice)
    if path is None:
        raise FileNotFoundError(f"VAE {choice!r} is not in ComfyUI's models/vae folder")
    return Path(path)


def text_encoder_names() -> list[str]:
    return folder_paths.get_filename_list("text_encoders")


def text_encoder_file(name: str) -> Path:
    path = folder_paths.get_full_path("text_encoders", name)
    if path is None:
        raise FileNotFoundError(f"text encoder file {name!r} is not in ComfyUI's models/text_encoders folder")
    return Path(path)


# the Pretrained Text Encoder node's entry for the MiniLM package's own weights
PACKAGE_TEXT_ENCODER = f"{MINILM_NAME} (package)"


def bert_folder_choices() -> list[str]:
    """The package's encoder, then the Hugging Face-layout folders (config.json inside) in models/text_encoders."""
    return [PACKAGE_TEXT_ENCODER, *sorted(_config_folders("text_encoders"))]


def bert_folder(choice: str) -> Path | None:
    """The folder of a bert_folder_choices entry; None for the package's. Only folders inside ComfyUI's
    models/text_encoders are found."""
    if choice == PACKAGE_TEXT_ENCODER:
        return None
    folders = _config_folders("text_encoders")
    if choice not in folders:
        raise FileNotFoundError(f"text encoder folder {choice!r} is not in ComfyUI's models/text_encoders folder; put "
                                "a BERT sentence encoder's folder (config.json, model.safetensors, tokenizer) there "
                                "and refresh")
    return folders[choice]


def file_stamp(path: Path | str | None) -> str:
    """Name, size and mtime of a file or folder tree: what fingerprint_inputs needs to see a changed file."""
    if path is None:
        return "missing"
    path = Path(path)
    try:
        if path.is_dir():
            stats = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in sorted(path.rglob("*")) if p.is_file()]
            return repr(stats)
        st = path.stat()
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"missing:{path}"
