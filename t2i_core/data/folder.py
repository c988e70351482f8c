"""Reading a folder of captioned images into memory.

Two folder conventions are understood:

* Captions next to images (ComfyUI core's and kohya's convention): `cat.png`
  is captioned by `cat.txt`. A `.txt` file may hold several captions, one per
  non-empty line; the trainer picks one at random each time it sees the image.
  Subfolders named `N_name/` (kohya) repeat their images N times per epoch.
* A `metadata.jsonl` or `metadata.csv` at the top of the folder (Hugging Face
  imagefolder convention) with a `file_name` column (path relative to the
  folder) and a `text` column. In jsonl, `text` may be a list of captions; in
  either format, a file listed on several rows collects all their captions.

The dataset folder is only ever read, never written.
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .buckets import bucket_sizes, bucket_step, bucket_table, nearest_bucket

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption")  # the first one present in a metadata row is used
REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")  # kohya: "10_cat" repeats its images 10 times
RANDOM_CROP_MARGIN = 1.125  # random_crop stores squares about this much larger than the crop

# Reasons a file is skipped. The text before ":" groups them in error summaries.
NO_CAPTION = "no .txt caption"
EMPTY_CAPTION = "caption file is empty"
UNREADABLE_CAPTION = "caption file is not UTF-8 text"
EMPTY_FILE = "empty file (0 bytes)"
UNREADABLE_IMAGE = "not a readable image"
NOT_IN_METADATA = "not listed in metadata"
MISSING_FILE = "listed in metadata but not found"
OUTSIDE_FOLDER = "listed in metadata but outside the dataset folder"
ZERO_REPEATS = "in a 0_ repeat folder"

FIXES = {
    NO_CAPTION: "add a same-name .txt file next to each image, or a metadata.jsonl",
    EMPTY_CAPTION: "write at least one caption line into each .txt file",
    UNREADABLE_CAPTION: "save the .txt files as UTF-8",
    EMPTY_FILE: "remove or replace the 0-byte files",
    UNREADABLE_IMAGE: "remove or re-save the corrupt images",
    NOT_IN_METADATA: "add a row for each image to the metadata file",
    MISSING_FILE: "fix the file_name column (paths are relative to the dataset folder)",
    OUTSIDE_FOLDER: "keep every file_name inside the dataset folder",
    ZERO_REPEATS: "rename the folder to N_name with N >= 1",
}


class DatasetError(ValueError):
    """A dataset folder that cannot be used, with what to do about it."""


@dataclass(frozen=True)
class DatasetItem:
    path: Path
    captions: tuple[str, ...]
    repeats: int = 1


@dataclass
class ScanResult:
    folder: Path
    items: list[DatasetItem]
    skipped: list[tuple[Path, str]]  # (file, reason)


# -----------------------------------------------------------------------------
# scanning: which files are usable, with which captions


def scan_dataset(folder: str | Path, *, verify_images: bool = True) -> ScanResult:
    """Find the captioned images in `folder`; raise DatasetError if there are none.

    Files that cannot be used (no caption, 0 bytes, corrupt) are listed in
    `skipped` with the reason. `verify_images=False` skips the PIL check, for
    callers that decode every image anyway.
    """
    folder = _existing_folder(folder)
    metadata = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if len(metadata) > 1:
        raise DatasetError(f"{folder} has both metadata.jsonl and metadata.csv; keep only one of them")

    if metadata:
        items, skipped = _scan_metadata(folder, metadata[0])
    else:
        items, skipped = _scan_caption_files(folder)

    usable = []
    for item in items:
        reason = _unusable_image_reason(item.path, verify_images)
        if reason:
            skipped.append((item.path, reason))
        else:
            usable.append(item)

    usable.sort(key=lambda item: item.path)
    skipped.sort(key=lambda entry: entry[0])
    if not usable:
        raise DatasetError(_nothing_usable_message(folder, skipped))
    return ScanResult(folder=folder, items=usable, skipped=skipped)


def _existing_folder(folder: str | Path) -> Path:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DatasetError(f"dataset folder {folder} does not exist; check the path")
    if not folder.is_dir():
        raise DatasetError(f"dataset path {folder} is a file, not a folder; give the folder that holds the images")
    return folder.resolve()


def _image_files(folder: Path) -> list[Path]:
    """Every image below `folder`, skipping hidden files and folders (.git, .ipynb_checkpoints)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(root) / name)
    return sorted(found)


def _repeats_for(folder: Path, image: Path) -> int:
    """kohya repeats come from the first folder level below the dataset folder."""
    parts = image.relative_to(folder).parts
    if len(parts) < 2:
        return 1
    match = REPEAT_FOLDER.match(parts[0])
    return int(match.group(1)) if match else 1


def _scan_caption_files(folder: Path) -> tuple[list[DatasetItem], list[tuple[Path, str]]]:
    items, skipped = [], []
    for image in _image_files(folder):
        repeats = _repeats_for(folder, image)
        if repeats == 0:
            skipped.append((image, ZERO_REPEATS))
            continue
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            skipped.append((image, NO_CAPTION))
            continue
        try:
            text = caption_file.read_text(encoding="utf-8-sig")  # -sig: tolerate a Windows BOM
        except UnicodeDecodeError:
            skipped.append((image, UNREADABLE_CAPTION))
            continue
        captions = tuple(line.strip() for line in text.splitlines() if line.strip())
        if not captions:
            skipped.append((image, EMPTY_CAPTION))
            continue
        items.append(DatasetItem(path=image, captions=captions, repeats=repeats))
    return items, skipped


def _scan_metadata(folder: Path, metadata: Path) -> tuple[list[DatasetItem], list[tuple[Path, str]]]:
    rows = _read_jsonl(metadata) if metadata.suffix == ".jsonl" else _read_csv(metadata)
    captions_by_path: dict[Path, list[str]] = {}
    skipped = []
    for line, row in rows:
        file_name = row.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise DatasetError(f"{metadata} line {line}: missing 'file_name'; every row needs the image's path relative to {folder}")
        column = next((c for c in CAPTION_COLUMNS if c in row), None)
        if column is None:
            raise DatasetError(f"{metadata} line {line}: no 'text' column; add the caption as \"text\"")
        text = row[column]
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, list) and all(isinstance(t, str) for t in text):
            texts = text
        elif text is None:
            texts = []
        else:
            raise DatasetError(f"{metadata} line {line}: 'text' must be a string or a list of strings, got {type(text).__name__}")
        path = (folder / file_name.strip()).resolve()
        if not path.is_relative_to(folder):
            skipped.append((path, OUTSIDE_FOLDER))
            continue
        captions_by_path.setdefault(path, []).extend(t.strip() for t in texts if t.strip())

    items = []
    for path, captions in captions_by_path.items():
        if not path.is_file():
            skipped.append((path, MISSING_FILE))
        elif not captions:
            skipped.append((path, EMPTY_CAPTION))
        else:
            items.append(DatasetItem(path=path, captions=tuple(dict.fromkeys(captions))))
    for image in _image_files(folder):
        if image.resolve() not in captions_by_path:
            skipped.append((image, NOT_IN_METADATA))
    return items, skipped


def _read_jsonl(metadata: Path) -> list[tuple[int, dict]]:
    rows = []
    for line_number, line in enumerate(metadata.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{metadata} line {line_number} is not valid JSON ({error.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{metadata} line {line_number} is not a JSON object; write {{\"file_name\": ..., \"text\": ...}}")
        rows.append((line_number, row))
    return rows


def _read_csv(metadata: Path) -> list[tuple[int, dict]]:
    with open(metadata, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "file_name" not in reader.fieldnames:
            raise DatasetError(f"{metadata} has no 'file_name' header; the first row must name the columns, e.g. file_name,text")
        # line numbers count the header as line 1, like an editor would
        return [(reader.line_num, row) for row in reader]


def _unusable_image_reason(path: Path, verify_image: bool) -> str | None:
    try:
        if path.stat().st_size == 0:
            return EMPTY_FILE
        if verify_image:
            with Image.open(path) as image:
                image.verify()
    except Exception as error:  # PIL raises many types for corrupt files
        return f"{UNREADABLE_IMAGE}: {type(error).__name__}: {error}"
    return None


def _nothing_usable_message(folder: Path, skipped: list[tuple[Path, str]]) -> str:
    if not skipped:
        # counts only: a message that listed the folder's entries would show a folder's contents to whoever
        # sent the path (the counts say enough to see the wrong folder was given)
        entries = list(folder.iterdir())
        folders = sum(p.is_dir() for p in entries)
        files = len(entries) - folders
        found = (f"none among its {_count(files, 'file')} and {_count(folders, 'subfolder')}" if entries
                 else "the folder is empty")
        return (f"no images in {folder} ({found}); put images ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                f"there with a same-name .txt caption each, or a metadata.jsonl")
    counts: dict[str, int] = {}
    for _, reason in skipped:
        kind = reason.split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
    found = ", ".join(f"{n} image{'s' if n > 1 else ''}: {kind}" for kind, n in counts.items())
    fixes = "; ".join(dict.fromkeys(FIXES[kind] for kind in counts if kind in FIXES))
    return f"no images with captions in {folder} ({found}); to fix: {fixes}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


# -----------------------------------------------------------------------------
# loading: decoded, resized images in memory


@dataclass
class CaptionedImages:
    """Every usable image of a folder, resized: square, as one uint8 tensor, or with aspect-ratio buckets, one
    uint8 tensor per image at its bucket's size.

    `index` lists item numbers with kohya repeats expanded, so a sampler draws
    positions in range(len(self)) and repeated images come up more often.
    """
    images: torch.Tensor | list[torch.Tensor]  # uint8 [N, 3, S, S] (S == resolution, or larger with random_crop),
    # or with buckets N tensors [3, h, w], (h, w) = bucket_sizes[item_bucket[i]]
    captions: list[tuple[str, ...]]
    digests: list[str]  # sha256 of each file's bytes, to key caches by content
    index: list[int]
    folder: Path
    resolution: int
    skipped: list[tuple[Path, str]]
    paths: list[Path] = field(default_factory=list)
    random_crop: bool = False
    random_flip: bool = False
    bucket_sizes: list[tuple[int, int]] | None = None  # (height, width) of each bucket in use; None: square
    item_bucket: list[int] | None = None  # bucket of each item

    def __len__(self) -> int:
        return len(self.index)

    @property
    def position_buckets(self) -> list[int] | None:
        """The bucket of each position in range(len(self)) (repeats expanded), or None without buckets."""
        return None if self.item_bucket is None else [self.item_bucket[i] for i in self.index]

    def batch(self, positions: torch.Tensor | Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
        """Float images [B, 3, R, R] in 0..1 for `positions` into `index`.

        Random crop and flip (when enabled) are drawn from `generator`, so the
        same generator state gives the same batch. With generator=None there is
        no augmentation: the center crop, unflipped.
        """
        items = self._items(positions)
        if self.item_bucket is not None and len({self.item_bucket[i] for i in items.tolist()}) > 1:
            raise ValueError("the positions of one batch must all come from one aspect-ratio bucket; draw them with "
                             "t2i_core.data.order.bucket_batch_positions")
        images = gather(self.images, items)
        size = self.resolution if self.item_bucket is None else images.shape[-1]  # a bucket is stored at its size
        augmenting = generator is not None
        return augment(images, size, generator, self.random_crop and augmenting,
                       self.random_flip and augmenting).float() / 255.0

    def pick_captions(self, positions: torch.Tensor | Sequence[int], generator: torch.Generator) -> list[str]:
        """One caption per position, chosen uniformly among the item's captions with `generator`."""
        items = self._items(positions)
        # one draw per position whatever the caption counts, so the generator advances predictably
        draws = torch.rand(len(items), generator=generator).tolist()
        picked = []
        for item, u in zip(items.tolist(), draws):
            options = self.captions[item]
            picked.append(options[min(int(u * len(options)), len(options) - 1)])
        return picked

    def _items(self, positions) -> torch.Tensor:
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self.index)):
            raise IndexError(f"positions must be in 0..{len(self.index) - 1}, got {positions.min().item()}..{positions.max().item()}")
        return torch.as_tensor(self.index, dtype=torch.long)[positions]


def gather(stored: torch.Tensor | list[torch.Tensor], items: torch.Tensor) -> torch.Tensor:
    """stored[items] as one batch, from a stacked tensor or from a list of same-size tensors (one bucket)."""
    if isinstance(stored, torch.Tensor):
        return stored[items.to(stored.device)]
    return torch.stack([stored[i] for i in items.tolist()])


def augment(x: torch.Tensor, size: int, generator: torch.Generator | None, crop: bool, flip: bool) -> torch.Tensor:
    """Random square crops of side `size` and random horizontal flips of a batch (B, C, S, S), drawn from
    `generator` in that order; without crop, the centre. The one augmentation, for images and for latents."""
    stored = x.shape[-1]
    if crop and stored > size:
        corners = torch.randint(0, stored - size + 1, (len(x), 2), generator=generator).tolist()
        x = torch.stack([img[:, y:y + size, c:c + size] for img, (y, c) in zip(x, corners)])
    elif stored > size:
        start = (stored - size) // 2
        x = x[:, :, start:start + size, start:start + size]
    if flip:
        mask = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def load_dataset(
    folder: str | Path,
    resolution: int,
    *,
    random_crop: bool = False,
    random_flip: bool = False,
    crop_step: int = 1,
    buckets: bool | None = None,
    size_factor: int = 1,
    log: Callable[[str], None] | None = None,
) -> CaptionedImages:
    """Decode every captioned image in `folder` to RGB, shorter side resized to
    `resolution` and center-cropped square. With random_crop the stored square
    is about resolution * 1.125, rounded up to a multiple of `crop_step` (a
    VAE's factor: its latents are then cropped whole cells at a time), so each
    step can crop a different window.

    With `buckets` each image is instead stored at the aspect-ratio bucket
    nearest its shape (t2i_core.data.buckets; sides multiples of `size_factor`,
    the codec x U-Net factor). buckets=None: on when the images are not all one
    shape (and random_crop is off), off for same-shape folders."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise DatasetError(f"resolution must be a positive integer number of pixels, got {resolution!r}")
    if buckets and random_crop:
        raise DatasetError("random_crop crops square windows, so it cannot be combined with aspect-ratio buckets; "
                           "turn random_crop off, or turn buckets off to centre-crop every image square")
    log = log or (lambda message: None)
    scan = scan_dataset(folder, verify_images=False)  # the decode below is the real check
    stored_size = resolution
    if random_crop:
        stored_size = -(-round(resolution * RANDOM_CROP_MARGIN) // crop_step) * crop_step
    shapes = {}  # item -> (height, width) as shown, for the bucket choice; unreadable ones fail in the decode
    if buckets or buckets is None and not random_crop:
        for item in scan.items:
            with contextlib.suppress(Exception):  # unreadable: skipped, with the reason, by the decode below
                shapes[item.path] = _oriented_size(item.path)
        if buckets is None:
            buckets = len({Fraction(w, h) for h, w in shapes.values()}) > 1
    sizes = bucket_sizes(resolution, bucket_step(resolution, size_factor)) if buckets else None

    images, captions, digests, paths, repeats, item_bucket = [], [], [], [], [], []
    skipped = list(scan.skipped)
    upscaled = 0
    for item in scan.items:
        try:
            data = item.path.read_bytes()
            if sizes is None:
                image, was_small = _square_rgb(data, stored_size)
            else:
                bucket = nearest_bucket(*(shapes.get(item.path) or _oriented_size(item.path)), sizes)
                image, was_small = _fitted_rgb(data, *sizes[bucket])
        except Exception as error:
            skipped.append((item.path, f"{UNREADABLE_IMAGE}: {type(error).__name__}: {error}"))
            continue
        upscaled += was_small
        images.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1))
        captions.append(item.captions)
        digests.append(hashlib.sha256(data).hexdigest())
        paths.append(item.path)
        repeats.append(item.repeats)
        if sizes is not None:
            item_bucket.append(bucket)
    skipped.sort(key=lambda entry: entry[0])
    if not images:
        raise DatasetError(_nothing_usable_message(scan.folder, skipped))

    index = [i for i, n in enumerate(repeats) for _ in range(n)]
    message = f"loaded {len(images)} images ({len(index)} with repeats) from {scan.folder} at {resolution}px"
    if upscaled:
        message += f"; {upscaled} smaller than {'their bucket' if sizes else f'{stored_size}px'} were upscaled"
    if skipped:
        first = ", ".join(f"{_relative(p, scan.folder)} ({reason})" for p, reason in skipped[:5])
        message += f"; skipped {len(skipped)}: {first}" + (", ..." if len(skipped) > 5 else "")
    used = None
    if sizes is not None:  # renumber to the buckets in use, tall to wide
        used = sorted(set(item_bucket))
        item_bucket = [used.index(b) for b in item_bucket]
        used = [sizes[b] for b in used]
        counts = [item_bucket.count(b) for b in range(len(used))]
        message += (f"; the images are not all one shape, so they train in {len(used)} aspect-ratio buckets of about "
                    f"{resolution}x{resolution} pixels (height x width: images): {bucket_table(used, counts)}")
    log(message)

    return CaptionedImages(
        images=torch.stack(images) if sizes is None else images, captions=captions, digests=digests, index=index,
        folder=scan.folder, resolution=resolution, skipped=skipped, paths=paths,
        random_crop=random_crop, random_flip=random_flip, bucket_sizes=used,
        item_bucket=item_bucket if sizes is not None else None,
    )


def _square_rgb(data: bytes, size: int) -> tuple[Image.Image, bool]:
    """Decode, shorter side to `size` (bicubic, antialiased when shrinking), center crop."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size, much faster for photos
        image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
        image = _to_rgb(image)
        width, height = image.size
        scale = size / min(width, height)
        new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return image.crop((left, top, left + size, top + size)), min(width, height) < size


def _oriented_size(path: Path) -> tuple[int, int]:
    """(height, width) of the image as shown: EXIF orientations 5-8 swap the stored sides."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _fitted_rgb(data: bytes, height: int, width: int) -> tuple[Image.Image, bool]:
    """Decode, resize to cover height x width (bicubic, antialiased when shrinking), center crop to it."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (width, height))
        image = _to_rgb(ImageOps.exif_transpose(image))
        w, h = image.size
        scale = max(width / w, height / h)
        new_size = (max(width, round(w * scale)), max(height, round(h * scale)))
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = (new_size[0] - width) // 2, (new_size[1] - height) // 2
    return image.crop((left, top, left + width, top + height)), scale > 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparent images go on white, since plain convert("RGB")
    would show whatever color hides under transparent pixels."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit grayscale PNGs: PIL's convert would clip everything above 255 to white
        values = np.asarray(image, dtype=np.float64)
        if values.max() > 255:
            values = values / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def fingerprint(folder: str | Path) -> str:
    """Cheap hash over (relative path, size, mtime_ns) of every file below `folder`.

    Changes when any file is added, removed, or modified, without reading file
    contents; meant for ComfyUI's IS_CHANGED cache invalidation.
    """
    folder = _existing_folder(folder)
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            try:
                stat = path.stat()
            except OSError:  # vanished or a broken link: part of the state, not an error
                entries.append(f"{path.relative_to(folder).as_posix()}\0missing")
                continue
            entries.append(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()
