"""Writing `.beton` files with FFCV's DatasetWriter and reading them back with FFCV's Loader.

Every `.beton` has a sidecar `<name>.json` with classes, counts per class, mean/std and resolution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from robrep.errors import DataError

_TORCH_THREADS = torch.get_num_threads()  # `import ffcv` sets torch to 1 thread; restore it afterwards
try:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomTranslate, Squeeze, ToTensor, ToTorchImage
    from ffcv.writer import DatasetWriter
except ImportError as e:  # FFCV is the product: no silent fallback to another loader
    raise ImportError(
        f"FFCV is required ({e}). Install it with `make install` (apt: libopencv-dev libturbojpeg0-dev "
        "pkg-config, then pip install ffcv)."
    ) from e
torch.set_num_threads(_TORCH_THREADS)


class _ArrayDataset:
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


def sidecar_path(beton: str | Path) -> Path:
    return Path(beton).with_suffix(".json")


def write_beton(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    info: dict,
    write_mode: str = "raw",
    num_workers: int = 1,
) -> Path:
    """Write (N, H, W, 3) uint8 images and (N,) labels to `path` plus its sidecar, atomically.

    FFCV writes to `<path>.tmp`, which is renamed only once complete: a killed writer leaves no `.beton`.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fields = {
        "image": RGBImageField(write_mode=write_mode, max_resolution=max(images.shape[1:3])),
        "label": IntField(),
    }
    DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(_ArrayDataset(images, labels))
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    counts = np.bincount(labels, minlength=info.get("num_classes", 0)).tolist()
    sidecar = {
        **info,
        "num_images": int(len(labels)),
        "counts_per_class": counts,
        "mean": pixels.mean(0).tolist(),
        "std": pixels.std(0).clip(1e-3).tolist(),
        "resolution": int(images.shape[1]),
        "write_mode": write_mode,
    }
    side_tmp = sidecar_path(path).with_suffix(".json.tmp")
    side_tmp.write_text(json.dumps(sidecar, indent=2))
    os.replace(side_tmp, sidecar_path(path))
    os.replace(tmp, path)
    return path


def read_info(path: str | Path) -> dict:
    """The sidecar JSON of a `.beton`; DataError if the dataset or its sidecar is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file {str(path)!r} does not exist; build it first (python -m jobs.build_dataset)")
    side = sidecar_path(path)
    if not side.is_file():
        raise DataError(f"{path} has no sidecar {side.name}; rebuild the dataset with python -m jobs.build_dataset")
    return json.loads(side.read_text())


def make_loader(
    path: str | Path,
    batch_size: int,
    *,
    train: bool,
    distributed: bool = False,
    seed: int = 0,
    num_workers: int = 1,
    translate: int = 0,
) -> Loader:
    """An FFCV Loader of ([0,1] float (B,3,H,W) channels_last, int64 labels (B,)).

    train=True shuffles (RANDOM: QUASI_RANDOM is unavailable when distributed) and drops the last
    partial batch; train=False reads in order and keeps every image. Batches are reused buffers:
    `.clone()` what you keep past the next iteration.
    """
    read_info(path)
    threads = torch.get_num_threads()
    image_pipeline = [SimpleRGBImageDecoder()]
    if train and translate > 0:
        image_pipeline.append(RandomTranslate(padding=translate))
    image_pipeline += [
        NormalizeImage(np.zeros(3), np.full(3, 255.0), np.float32),  # uint8 -> [0,1] float32
        ToTensor(),
        ToTorchImage(channels_last=True),
    ]
    loader = Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
        drop_last=train,
        distributed=distributed,
        seed=seed,
        pipelines={"image": image_pipeline, "label": [IntDecoder(), ToTensor(), Squeeze(1)]},
    )
    torch.set_num_threads(threads)  # importing ffcv and building a Loader reset torch's thread count
    return loader


def read_all(path: str | Path, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in index order: ((N,3,H,W) float in [0,1], (N,) int64). For random access by index."""
    images, labels = [], []
    for x, y in make_loader(path, batch_size, train=False):
        images.append(x.contiguous().clone())
        labels.append(y.long().clone())
    return torch.cat(images), torch.cat(labels)
