"""Writing `.beton` files with FFCV's DatasetWriter and reading them back with FFCV's Loader.

Every `.beton` has a sidecar `<name>.json`: source, classes, label names, counts per class, mean/std,
resolution, write options, and the files that were skipped and why. Loaders return [0,1] floats in
channels_last; models normalize.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from robrep.core.errors import DataError
from robrep.core.location import file_digest

_TORCH_THREADS = torch.get_num_threads()  # `import ffcv` sets torch to 1 thread; restore it afterwards
try:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.decoders import (
        CenterCropRGBImageDecoder,
        IntDecoder,
        RandomResizedCropRGBImageDecoder,
        SimpleRGBImageDecoder,
    )
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, RandomTranslate, Squeeze, ToTensor, ToTorchImage
    from ffcv.writer import DatasetWriter
except ImportError as e:  # FFCV is the product: no silent fallback to another loader
    raise ImportError(
        f"FFCV is required ({e}). Install it with `make install` (apt: libopencv-dev libturbojpeg0-dev "
        "pkg-config, then pip install ffcv)."
    ) from e
torch.set_num_threads(_TORCH_THREADS)

WRITE_MODES = ("raw", "jpg", "proportion", "smart")
# Train-time augmentation, per kind of data:
#   rrc_flip:  RandomResizedCrop + horizontal flip (ImageNet-like); val: centre crop (ratio 224/256)
#   crop_flip: random crop with `padding` + flip (CIFAR-like, 32 px); val: the image as is
#   translate: random crop with `padding`, no flip (digits: a flipped digit is another symbol)
#   none:      the image as is
AUGMENTS = ("rrc_flip", "crop_flip", "translate", "none")


def sidecar_path(beton: str | Path) -> Path:
    return Path(beton).with_suffix(".json")


def write_beton(
    path: str | Path,
    source,
    *,
    write_mode: str = "raw",
    max_resolution: int | None = None,
    jpeg_quality: int = 90,
    compress_probability: float = 0.5,
    num_workers: int = 1,
    augment: str = "none",
    info: dict | None = None,
) -> Path:
    """Write a `datasets.sources.Source` (or anything indexable as (H x W x 3 uint8, label) with
    `labels`, `label_names`, `name`, `mean`, `std`, `skipped`) to `path`, plus its sidecar.

    FFCV writes `<path>.tmp`, renamed only once complete: a killed writer leaves no `.beton` behind.
    """
    if write_mode not in WRITE_MODES:
        raise DataError(f"write_mode={write_mode!r}: use one of {WRITE_MODES}")
    if augment not in AUGMENTS:
        raise DataError(f"augment={augment!r}: use one of {AUGMENTS}")
    if len(source) == 0:
        raise DataError(f"{source.name} has no images to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image_field = RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                                compress_probability=compress_probability)
    side_tmp = sidecar_path(path).with_suffix(".json.tmp")
    try:  # nothing is left behind on any error: no temp file, no orphan sidecar
        writer = DatasetWriter(str(tmp), {"image": image_field, "label": IntField()}, num_workers=num_workers)
        writer.from_indexed_dataset(source)
        first = source[0][0]
        resolution = max(first.shape[:2]) if max_resolution is None else min(max_resolution, max(first.shape[:2]))
        sidecar = {
            "source": source.name,
            "num_images": len(source),
            "num_classes": len(source.label_names),
            "label_names": list(source.label_names),
            "counts_per_class": np.bincount(source.labels, minlength=len(source.label_names)).tolist(),
            "mean": list(source.mean),
            "std": list(source.std),
            "channels": getattr(source, "channels", 3),
            "resolution": int(resolution),
            "write_mode": write_mode,
            "max_resolution": max_resolution,
            "jpeg_quality": jpeg_quality,
            "augment": augment,
            "skipped": list(source.skipped),
            **(info or {}),
        }
        sidecar["fingerprint"] = file_digest(tmp)  # the data's identity: part of every fan-out job id
        sidecar["beton_size"] = tmp.stat().st_size  # read_info checks that the sidecar describes the .beton beside it
        side_tmp.write_text(json.dumps(sidecar, indent=2))
        os.replace(tmp, path)
        os.replace(side_tmp, sidecar_path(path))
    finally:
        for leftover in (tmp, side_tmp):
            leftover.unlink(missing_ok=True)
    return path


def read_info(path: str | Path) -> dict:
    """The sidecar JSON of a `.beton`; DataError if the dataset or its sidecar is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file {str(path)!r} does not exist; build it first (python -m jobs.build_dataset)")
    side = sidecar_path(path)
    if not side.is_file():
        raise DataError(f"{path} has no sidecar {side.name}; rebuild the dataset with python -m jobs.build_dataset")
    try:
        info = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"sidecar {side} is not JSON ({e}); rebuild it with python -m jobs.build_dataset") from e
    if not isinstance(info, dict) or not {"num_images", "num_classes", "resolution", "mean", "std"} <= set(info):
        raise DataError(f"sidecar {side} does not describe a robrep dataset; rebuild with python -m jobs.build_dataset")
    if "beton_size" in info and info["beton_size"] != path.stat().st_size:
        raise DataError(f"{side} does not describe the {path.name} beside it (one of the pair was replaced or is "
                        "being rewritten); rebuild it with python -m jobs.build_dataset, or retry once it is done")
    _check_header(path, info["num_images"])
    return info


def fingerprint(path: str | Path, info: dict) -> str:
    """The dataset's identity: the sidecar's digest of the .beton, or computed for betons built before it was kept."""
    return info.get("fingerprint") or file_digest(path)


def _check_header(path: Path, num_images: int) -> None:
    """The .beton is an FFCV file of the sidecar's size: its header's version and sample count match."""
    from ffcv.types import CURRENT_VERSION, HeaderType

    if path.stat().st_size < HeaderType.itemsize:
        raise DataError(f"{path} is too short to be a .beton; rebuild it with python -m jobs.build_dataset")
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    if int(header["version"]) != CURRENT_VERSION or int(header["num_samples"]) != num_images \
            or int(header["alloc_table_ptr"]) > path.stat().st_size:
        raise DataError(f"{path} is not the FFCV .beton its sidecar describes (version {int(header['version'])}, "
                        f"{int(header['num_samples'])} samples, sidecar: {num_images}); rebuild it with "
                        "python -m jobs.build_dataset")


class FirstChannel(torch.nn.Module):
    """(B, 3, H, W) -> (B, 1, H, W): a grey dataset's one channel (FFCV stores RGB; its three channels are equal)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].contiguous(memory_format=torch.channels_last)


def channels(info: dict) -> int:
    """How many channels the dataset's loaders give and its models take (1: grey; sidecars before it: 3)."""
    return int(info.get("channels", 3))


def _image_pipeline(train: bool, augment: str, resolution: int, padding: int, grey: bool) -> list:
    if augment == "rrc_flip":
        decoder = RandomResizedCropRGBImageDecoder((resolution, resolution)) if train else (
            CenterCropRGBImageDecoder((resolution, resolution), ratio=224 / 256))
        steps = [decoder] + ([RandomHorizontalFlip()] if train else [])
    else:
        steps = [SimpleRGBImageDecoder()]
        if train and augment in ("crop_flip", "translate"):
            steps.append(RandomTranslate(padding=padding))
        if train and augment == "crop_flip":
            steps.append(RandomHorizontalFlip())
    return steps + [
        NormalizeImage(np.zeros(3), np.full(3, 255.0), np.float32),  # uint8 -> [0,1] float32
        ToTensor(),
        ToTorchImage(channels_last=True),
        *([FirstChannel()] if grey else []),
    ]


def make_loader(
    path: str | Path,
    batch_size: int,
    *,
    train: bool,
    distributed: bool = False,
    rng_seed: int = 0,
    num_workers: int = 1,
    augment: str | None = None,
    resolution: int | None = None,
    padding: int = 4,
    indices: list[int] | None = None,
) -> Loader:
    """An FFCV Loader of ([0,1] float (B,C,R,R) channels_last, int64 labels (B,)); C = 1 for a grey dataset.

    train=True shuffles (RANDOM: QUASI_RANDOM is unavailable when distributed), augments, and drops the
    last partial batch; train=False reads in index order, centre-crops where the augment crops, and
    keeps every image. `augment` and `resolution` default to the sidecar's. distributed=True gives each
    rank of the process group a disjoint shard. Batches are reused buffers: `.clone()` what you keep.
    """
    info = read_info(path)
    augment = augment or info.get("augment", "none")
    if augment not in AUGMENTS:
        raise DataError(f"augment={augment!r}: use one of {AUGMENTS}")
    resolution = resolution or info["resolution"]
    threads = torch.get_num_threads()
    loader = Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
        drop_last=train,
        distributed=distributed,
        seed=rng_seed,
        indices=indices,
        pipelines={
            "image": _image_pipeline(train, augment, resolution, padding, channels(info) == 1),
            "label": [IntDecoder(), ToTensor(), Squeeze(1)],
        },
    )
    torch.set_num_threads(threads)  # building a Loader resets torch's thread count
    return loader


def read_indices(path: str | Path, indices, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Images by index, deterministically (val pipeline: no augmentation), in the order asked for:
    ((len(indices), C, R, R) float in [0,1], (len(indices),) int64). For fan-out workers."""
    indices = [int(i) for i in indices]
    size = read_info(path)["num_images"]
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise DataError(f"indices {bad[:5]} are out of range for {path} ({size} images)")
    unique = sorted(set(indices))
    images, labels = [], []
    for x, y in make_loader(path, batch_size, train=False, indices=unique):
        images.append(x.contiguous().clone())
        labels.append(y.long().clone())
    images, labels = torch.cat(images), torch.cat(labels)
    where = {index: row for row, index in enumerate(unique)}
    order = torch.tensor([where[i] for i in indices], dtype=torch.long)
    return images[order], labels[order]


def read_all(path: str | Path, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in index order (val pipeline): ((N,C,R,R) float in [0,1], (N,) int64)."""
    return read_indices(path, range(read_info(path)["num_images"]), batch_size)


def read_labels(path: str | Path, batch_size: int = 4096) -> np.ndarray:
    """Every label in index order, without decoding a single image: (N,) int64."""
    read_info(path)
    loader = Loader(str(path), batch_size=batch_size, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": None, "label": [IntDecoder(), ToTensor(), Squeeze(1)]})
    labels = np.concatenate([batch[0].numpy().copy() for batch in loader]).astype(np.int64)
    torch.set_num_threads(_TORCH_THREADS)
    return labels
