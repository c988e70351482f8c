"""Writing a built-in dataset into a folder without ever overwriting a user's files.

A marker file records which generator wrote the folder, with which settings and files, so re-running with the same
settings reuses it, other settings replace only our own files, and a folder we did not write is refused.
"""
import json
from pathlib import Path

from PIL import Image

from .folder import DatasetError

MARKER_FILE = ".t2i_builtin.json"  # marks a folder as ours, so re-running may replace its files


def write_captioned_images(folder: Path, generator: str, settings: dict, names: list[str], images,
                            captions: list[str]) -> Path:
    """NAME.png + NAME.txt for each image (uint8 [H, W, 3]) and caption, unless the folder already holds exactly
    this output; returns the folder."""
    if prepare_output_folder(folder, generator, settings, [f"{n}{ext}" for n in names for ext in (".png", ".txt")]):
        return folder
    for name, image, caption in zip(names, images, captions):
        Image.fromarray(image).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
    mark_complete(folder)
    return folder


def prepare_output_folder(folder: Path, generator: str, settings: dict, files: list[str]) -> bool:
    """Make `folder` ready for `files`; True if it already holds exactly this output.

    A non-empty folder is only touched if our marker file says this generator
    wrote it; then only the files the marker lists are removed.
    """
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"{folder} is a file; give a folder path for the {generator} dataset")
    marker = folder / MARKER_FILE
    if folder.is_dir() and any(folder.iterdir()):
        previous = read_marker(marker)
        if previous is None:
            raise DatasetError(f"{folder} is not empty and was not written by make_{generator}_dataset; "
                               f"refusing to write there so no files are overwritten; choose a new or empty folder")
        if previous.get("generator") != generator:
            raise DatasetError(f"{folder} holds the {previous.get('generator')} dataset, not {generator}; "
                               f"choose another folder for the {generator} dataset")
        if previous.get("settings") == settings and previous.get("complete") and all((folder / f).is_file() for f in files):
            return True
        for name in previous.get("files", []):
            if isinstance(name, str) and "/" not in name and "\\" not in name:  # only our own flat file names
                (folder / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    # written before the files: an interrupted run still leaves the folder recognisably ours
    marker.write_text(json.dumps({"generator": generator, "settings": settings, "complete": False, "files": files}))
    return False


def mark_complete(folder: Path) -> None:
    marker = folder / MARKER_FILE
    record = json.loads(marker.read_text())
    record["complete"] = True
    marker.write_text(json.dumps(record))


def read_marker(marker: Path):
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
