"""Build FFCV `.beton` files (plus JSON sidecars) from an image source.

    python -m jobs.build_dataset --config jobs/configs/digits.yaml      # the experiment's data: section
    python -m jobs.build_dataset --source imagefolder --root /data/imagenet/train --out /data/in_train.beton \
        --max-resolution 256 --write-mode proportion --jpeg-quality 90 --num-workers 16
    python -m jobs.build_dataset --source restricted_imagenet --root /data/imagenet/val --out /data/ri_val.beton
    python -m jobs.build_dataset --source cifar10 --root /data/cifar-10-batches-py --split train --out c10.beton

Every flag is an alias of a key of the config's `build:` section (one .beton from any source); without a
build section, the config's `data:` section is built. Unreadable or corrupt files are skipped and listed in
the sidecar; --strict makes them an error.
"""

from __future__ import annotations

import time
from pathlib import Path

from jobs.common import Alias, run_entry_point
from jobs.config import BuildSpec, DataSpec, ExperimentConfig
from robrep.core.errors import DataError
from robrep.core.location import redact

DEFAULT_AUGMENT = {"digits": "none", "cifar10": "crop_flip", "imagefolder": "rrc_flip",
                   "restricted_imagenet": "rrc_flip", "synthetic": "none"}
ALIASES = (
    Alias("--source", "build.source", help="digits, cifar10, imagefolder, restricted_imagenet or synthetic"),
    Alias("--out", "build.out", help="the .beton to write; its sidecar goes beside it"),
    Alias("--root", "build.root", help="the source folder (imagefolder, restricted_imagenet, cifar10)"),
    Alias("--split", "build.split", help="train or test"),
    Alias("--max-resolution", "build.max_resolution", int, "resize so the longer side <= this"),
    Alias("--write-mode", "build.write_mode", help="raw, jpg, proportion or smart"),
    Alias("--jpeg-quality", "build.jpeg_quality", int),
    Alias("--compress-probability", "build.compress_probability", float, "for --write-mode proportion"),
    Alias("--num-workers", "build.num_workers", int),
    Alias("--augment", "build.augment", help="the loaders' default train augmentation (default: by source)"),
    Alias("--strict", "build.strict", bool, "a corrupt or unreadable file is an error"),
    Alias("--resolution", "build.resolution", int, "digits and synthetic only"),
    Alias("--num-classes", "build.num_classes", int, "synthetic only"),
    Alias("--per-class", "build.per_class", int, "synthetic only"),
    Alias("--rng-seed", "build.rng_seed", int, "digits: the split; synthetic: the images"),
)


def _ready(data: DataSpec, split: str) -> bool:
    """The split is on this node: staged from data.stage_from (copied now if need be), or in data.dir (and then
    uploaded to data.stage_from, where that is set but holds nothing yet)."""
    from datasets.beton import read_info
    from datasets.stage import upload

    if data.stage_from is None:
        return data.path(split).is_file()
    try:
        data.local(split)
    except DataError:
        if not data.path(split).is_file():
            return False
        read_info(data.path(split))  # built here before stage_from was set: a whole pair, uploaded as it is
        upload(data.path(split), data.stage_source(split))
        print(f"[data] uploaded {data.path(split)} to {redact(data.stage_source(split))}", flush=True)
    return True


def build(data: DataSpec, force: bool = False) -> None:
    """Write <data.dir>/{train,test}.beton for an experiment unless both exist (idempotent), and upload them to
    data.stage_from where that is set (from where every node copies them).

    `files` data is never built here: its betons must exist (DataError naming the command otherwise).
    """
    from datasets.beton import read_info, write_beton
    from datasets.sources import digits, synthetic
    from datasets.stage import upload

    if data.source == "files" or (not force and all(_ready(data, split) for split in ("train", "test"))):
        for split in ("train", "test"):
            read_info(data.local(split))
        where = f" (staged from {redact(data.stage_from)})" if data.stage_from else ""
        print(f"[data] using {data.path('train').parent}/{{train,test}}.beton{where}", flush=True)
        return
    for offset, split in enumerate(("train", "test")):
        if data.source == "digits":
            source = digits(data.resolution, split, data.test_fraction, data.rng_seed)
        else:
            source = synthetic(data.num_classes, data.per_class, data.resolution, data.rng_seed * 2 + offset)
        write_beton(data.path(split), source, augment=DEFAULT_AUGMENT[data.source], info={"split": split})
        print(f"[data] wrote {data.path(split)}: {len(source)} images at {data.resolution}px", flush=True)
        if data.stage_from:
            upload(data.path(split), data.stage_source(split))
            print(f"[data] uploaded it to {redact(data.stage_source(split))}", flush=True)


def build_one(spec: BuildSpec) -> Path:
    """One .beton from any source (the `build:` section)."""
    from datasets import sources
    from datasets.beton import write_beton

    if spec.source == "digits":
        source = sources.digits(spec.resolution, spec.split, rng_seed=spec.rng_seed)
    elif spec.source == "synthetic":
        source = sources.synthetic(spec.num_classes, spec.per_class, spec.resolution, spec.rng_seed)
    elif spec.source == "cifar10":
        source = sources.cifar10(spec.root, spec.split)
    else:
        source = getattr(sources, spec.source)(spec.root)
        source = sources.scan(source, strict=spec.strict, num_workers=spec.num_workers)
    start = time.time()
    path = write_beton(
        spec.out, source, write_mode=spec.write_mode, max_resolution=spec.max_resolution,
        jpeg_quality=spec.jpeg_quality, compress_probability=spec.compress_probability,
        num_workers=spec.num_workers, augment=spec.augment or DEFAULT_AUGMENT[spec.source],
        info={"split": spec.split},
    )
    print(f"[data] wrote {path}: {len(source)} images, {len(source.label_names)} classes, "
          f"{len(source.skipped)} files skipped, {time.time() - start:.1f}s", flush=True)
    for item in source.skipped[:10]:
        print(f"[data] skipped {item['path']}: {item['reason']}", flush=True)
    return path


def main(config: ExperimentConfig) -> None:
    if config.build is not None:
        build_one(config.build)
    else:
        build(config.data, force=True)


def cli(argv: list[str] | None = None) -> None:
    run_entry_point(main, __doc__, argv, aliases=ALIASES, config_required=False)


if __name__ == "__main__":
    cli()
