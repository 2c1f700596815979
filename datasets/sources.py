"""Image sources that `.beton` files are written from, each a sequence of (H x W x 3 uint8, label):

- `imagefolder`: an ImageNet-style tree `root/<class>/<image>` (wnid folders), classes in sorted order;
- `restricted_imagenet`: the same tree (all 1000 wnids), keeping the 9 inclusive index ranges of
  Restricted ImageNet (paper Table 1) and dropping every other class;
- `cifar10`: the python folder `cifar-10-batches-py`;
- `digits`: scikit-learn's digits; `synthetic`: a deterministic generator for tests.

Folder sources are scanned first: every file is decoded once, so unreadable, truncated or corrupt files
are skipped and reported (or, with strict=True, raise a DataError naming the file).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from robrep.core.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"}

# Restricted ImageNet (paper A.1, Table 1): inclusive ranges over the sorted ImageNet wnid order.
RESTRICTED_IMAGENET_RANGES = (
    ("dog", 151, 268), ("cat", 281, 285), ("frog", 30, 32), ("turtle", 33, 37), ("bird", 80, 100),
    ("primate", 365, 382), ("fish", 389, 397), ("crab", 118, 121), ("insect", 300, 319),
)


@dataclass
class Source:
    """What a `.beton` is written from. `load(i)` gives (H, W, 3) uint8; labels are 0..num_classes-1."""

    name: str
    label_names: list[str]
    labels: np.ndarray  # (N,) int64
    images: np.ndarray | None = None  # (N, H, W, 3) uint8, for in-memory sources
    files: list[Path] | None = None  # for folder sources
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}
    mean: list[float] | None = None  # per channel the model sees (`channels` of them)
    std: list[float] | None = None
    channels: int = 3  # 1: a grey source; its loaders give (B, 1, H, W) and its models take one channel

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        image = self.images[i] if self.images is not None else load_rgb(self.files[i])
        return image, int(self.labels[i])


MAX_PIXELS = 100_000_000  # an image larger than this (e.g. a decompression bomb) is skipped, never decoded


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file fully to (H, W, 3) uint8. Grayscale and CMYK are converted; transparency is
    composited onto white. ValueError for an image of more than MAX_PIXELS pixels (before decoding it)."""
    with Image.open(path) as image:
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels is more than {MAX_PIXELS:,}")
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))


def _scan_one(path: Path) -> tuple[str | None, np.ndarray | None]:
    """(error or None, per-channel [sum, sum of squares, pixel count] in [0,1] units)."""
    try:
        pixels = load_rgb(path).reshape(-1, 3).astype(np.float64) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}", None
    return None, np.stack([pixels.sum(0), (pixels**2).sum(0), np.full(3, len(pixels))])


def scan(source: Source, strict: bool, num_workers: int, progress: bool = True) -> Source:
    """Decode every file of a folder source once: drop (or, strict, refuse) the unreadable ones, and
    compute the per-channel mean/std of what is kept."""
    from tqdm import tqdm

    with Pool(max(1, num_workers)) as pool:
        results = list(tqdm(pool.imap(_scan_one, source.files, chunksize=16), total=len(source.files),
                            desc=f"scan {source.name}", disable=not progress))
    keep, totals = [], np.zeros((3, 3))
    for i, (error, stats) in enumerate(results):
        if error is None:
            keep.append(i)
            totals += stats
        elif strict:
            raise DataError(f"cannot read image {source.files[i]}: {error} (drop --strict to skip such files)")
        else:
            source.skipped.append({"path": str(source.files[i]), "reason": error})
    if not keep:
        raise DataError(f"no readable image in {source.name}: all {len(source.files)} files failed")
    mean = totals[0] / totals[2]
    std = np.sqrt(np.maximum(totals[1] / totals[2] - mean**2, 1e-6))
    source.files = [source.files[i] for i in keep]
    source.labels = source.labels[keep]
    source.mean, source.std = mean.tolist(), std.tolist()
    return source


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"image folder root {str(root)!r} does not exist or is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root} has no class folders: expected root/<class>/<image files>")
    return folders


def _list_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"class folder {folder} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def _folder_source(name: str, folders: Sequence[Path], labels: Sequence[int], label_names: list[str]) -> Source:
    files, file_labels = [], []
    for folder, label in zip(folders, labels, strict=True):
        images = _list_images(folder)
        files += images
        file_labels += [label] * len(images)
    return Source(name, label_names, np.asarray(file_labels, dtype=np.int64), files=files)


def imagefolder(root: str | Path) -> Source:
    """root/<class>/<image>: one label per class folder, in sorted folder order."""
    folders = _class_folders(Path(root))
    return _folder_source(f"imagefolder:{root}", folders, range(len(folders)), [f.name for f in folders])


def restricted_imagenet(root: str | Path) -> Source:
    """Restricted ImageNet from the 1000-wnid ImageNet tree: 9 classes from inclusive index ranges."""
    folders = _class_folders(Path(root))
    if len(folders) != 1000:
        raise DataError(
            f"{root} has {len(folders)} class folders; Restricted ImageNet indexes the sorted order of all 1000 "
            "ImageNet wnid folders (train/ or val/ in ImageFolder layout)"
        )
    chosen, labels = [], []
    for label, (_, first, last) in enumerate(RESTRICTED_IMAGENET_RANGES):
        chosen += folders[first : last + 1]
        labels += [label] * (last - first + 1)
    names = [name for name, _, _ in RESTRICTED_IMAGENET_RANGES]
    return _folder_source(f"restricted_imagenet:{root}", chosen, labels, names)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of bytes, lists and numpy arrays) and refuses anything else:
    a pickle can name any callable, and these files come from outside."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a CIFAR batch file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 file {path}: expected the python version (cifar-10-batches-py)")
    try:
        return _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {e}") from e


def _cifar_arrays(batch) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError("a CIFAR-10 batch is a dict with b'data' and b'labels'")
    return np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"], dtype=np.int64)


def cifar10(root: str | Path, split: str) -> Source:
    """The CIFAR-10 python folder: data_batch_1..5 (train) or test_batch (test), 32x32 RGB."""
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DataError(f"CIFAR-10 folder {str(root)!r} does not exist")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches = [_read_cifar_batch(root / n) for n in names]
    for name, batch in zip(names, batches, strict=True):
        data, labels = _cifar_arrays(batch)
        valid_labels = len(labels) == len(data) and bool(((labels >= 0) & (labels < 10)).all())
        if data.ndim != 2 or data.shape[1] != 3072 or not valid_labels:
            raise DataError(f"{root / name} is not a CIFAR-10 batch: data {data.shape} (want (N, 3072)), "
                            f"{len(labels)} labels in 0..9 expected")
    data = np.concatenate([_cifar_arrays(b)[0] for b in batches])  # (N, 3072), CHW planes
    labels = np.concatenate([_cifar_arrays(b)[1] for b in batches])
    meta = _read_cifar_batch(root / "batches.meta")
    label_names = [n.decode() for n in meta[b"label_names"]]
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return _array_source(f"cifar10:{root}:{split}", images, labels, label_names)


def synthetic(num_classes: int = 10, per_class: int = 20, resolution: int = 32, rng_seed: int = 0) -> Source:
    """Deterministic class-dependent images: a colour and a stripe frequency per class, plus noise."""
    if resolution < 1 or num_classes < 1 or per_class < 1:
        raise DataError(f"synthetic needs resolution, num_classes and per_class >= 1; got {resolution}, "
                        f"{num_classes}, {per_class}")
    rng = np.random.default_rng(rng_seed)
    ys, xs = np.mgrid[0:resolution, 0:resolution] / resolution
    images, labels = [], []
    for c in range(num_classes):
        colour = np.array([(37 * c) % 256, (91 * c + 60) % 256, (151 * c + 120) % 256], dtype=np.float64)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (c + 1) * (xs + 0.5 * ys))  # (R, R)
        for _ in range(per_class):
            noise = rng.normal(0, 20, (resolution, resolution, 3))
            image = colour * (0.4 + 0.6 * stripes[..., None]) + noise
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(c)
    return _array_source(
        f"synthetic:{num_classes}x{per_class}@{resolution}:{rng_seed}", np.stack(images), np.asarray(labels),
        [f"class_{c}" for c in range(num_classes)],
    )


# Out-of-distribution targets for models trained on digits: shapes and letters drawn as bright strokes on black,
# the digits' style, none of them a digit. Each is a polyline (or an ellipse) in a unit square.
GLYPHS: dict[str, list[list[tuple[float, float]]]] = {
    "circle": [],  # an ellipse, drawn apart
    "square": [[(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.2)]],
    "triangle": [[(0.5, 0.15), (0.85, 0.8), (0.15, 0.8), (0.5, 0.15)]],
    "cross": [[(0.5, 0.15), (0.5, 0.85)], [(0.15, 0.5), (0.85, 0.5)]],
    "A": [[(0.2, 0.85), (0.5, 0.15), (0.8, 0.85)], [(0.32, 0.58), (0.68, 0.58)]],
    "E": [[(0.75, 0.15), (0.3, 0.15), (0.3, 0.85), (0.75, 0.85)], [(0.3, 0.5), (0.65, 0.5)]],
    "H": [[(0.25, 0.15), (0.25, 0.85)], [(0.75, 0.15), (0.75, 0.85)], [(0.25, 0.5), (0.75, 0.5)]],
    "X": [[(0.2, 0.15), (0.8, 0.85)], [(0.8, 0.15), (0.2, 0.85)]],
}


def glyphs(resolution: int, per_class: int = 4, rng_seed: int = 0) -> Source:
    """Shapes and letters (GLYPHS) at `resolution`, `per_class` variants each (a small random shift and scale),
    drawn at 8x and downsampled, so strokes are soft like the digits'."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(rng_seed)
    big = resolution * 8
    images, labels = [], []
    for label, (name, strokes) in enumerate(GLYPHS.items()):
        for _ in range(per_class):
            scale, dx, dy = rng.uniform(0.85, 1.0), *rng.uniform(-0.06, 0.06, 2)

            def at(p, scale=scale, dx=dx, dy=dy):
                return (big * (0.5 + (p[0] - 0.5) * scale + dx), big * (0.5 + (p[1] - 0.5) * scale + dy))

            canvas = Image.new("L", (big, big), 0)
            draw = ImageDraw.Draw(canvas)
            width = max(1, round(big * 0.1))
            if name == "circle":
                draw.ellipse([*at((0.2, 0.2)), *at((0.8, 0.8))], outline=255, width=width)
            for line in strokes:
                draw.line([at(p) for p in line], fill=255, width=width, joint="curve")
            small = np.asarray(canvas.resize((resolution, resolution), Image.BILINEAR, reducing_gap=2.0))
            images.append(np.repeat(small[..., None], 3, axis=2))
            labels.append(label)
    return _array_source(f"glyphs@{resolution}", np.stack(images), np.asarray(labels), list(GLYPHS), channels=1)


def digits(resolution: int, split: str, test_fraction: float = 0.2, rng_seed: int = 0) -> Source:
    """scikit-learn's digits resized to `resolution`, with a deterministic stratified split."""
    from datasets.digits import LABEL_NAMES, load_digits_rgb, split_indices

    images, labels = load_digits_rgb(resolution)
    train, test = split_indices(labels, test_fraction, rng_seed)
    idx = train if split == "train" else test
    return _array_source(f"digits:{split}", images[idx], labels[idx], LABEL_NAMES, channels=1)


def _array_source(name: str, images: np.ndarray, labels: np.ndarray, label_names: list[str], channels: int = 3
                  ) -> Source:
    """channels=1: a grey source (its three stored channels are equal); its models see one channel."""
    pixels = images[..., :channels].reshape(-1, channels).astype(np.float64) / 255.0
    return Source(name, label_names, labels.astype(np.int64), images=images, mean=pixels.mean(0).tolist(),
                  std=np.maximum(pixels.std(0), 1e-3).tolist(), channels=channels)


# Datasets a fan-out builds by name when a block takes its images from one that is not there yet (invert's
# targets_from): name -> a source at a given resolution.
BUILT_IN_TARGETS = {"glyphs": glyphs}
