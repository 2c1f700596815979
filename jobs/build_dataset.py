"""Build FFCV `.beton` files (plus JSON sidecars) from an image source.

    python -m jobs.build_dataset --source imagefolder --root /data/imagenet/train --out /data/in_train.beton \
        --max-resolution 256 --write-mode proportion --jpeg-quality 90 --num-workers 16
    python -m jobs.build_dataset --source restricted_imagenet --root /data/imagenet/val --out /data/ri_val.beton
    python -m jobs.build_dataset --source cifar10 --root /data/cifar-10-batches-py --split train --out c10.beton
    python -m jobs.build_dataset --config jobs/configs/digits.yaml      # the experiment's own data section

Unreadable or corrupt files are skipped and listed in the sidecar; --strict makes them an error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jobs.common import exit_on_error, run_entry_point
from jobs.config import DataSpec, ExperimentConfig
from robrep.errors import RobrepError

SOURCES = ("digits", "cifar10", "imagefolder", "restricted_imagenet", "synthetic")
DEFAULT_AUGMENT = {"digits": "none", "cifar10": "crop_flip", "imagefolder": "rrc_flip",
                   "restricted_imagenet": "rrc_flip", "synthetic": "none"}


def build(data: DataSpec, force: bool = False) -> None:
    """Write <data.dir>/{train,test}.beton for an experiment unless both exist (idempotent).

    `files` data is never built here: its betons must exist (DataError naming the command otherwise).
    """
    from datasets.beton import read_info, write_beton
    from datasets.sources import digits, synthetic

    if data.source == "files" or (not force and data.path("train").is_file() and data.path("test").is_file()):
        for split in ("train", "test"):
            read_info(data.path(split))
        print(f"[data] using {data.path('train').parent}/{{train,test}}.beton", flush=True)
        return
    for seed, split in enumerate(("train", "test")):
        if data.source == "digits":
            source = digits(data.resolution, split, data.test_fraction, data.split_seed)
        else:
            source = synthetic(data.num_classes, data.per_class, data.resolution, data.split_seed * 2 + seed)
        write_beton(data.path(split), source, augment=DEFAULT_AUGMENT[data.source], info={"split": split})
        print(f"[data] wrote {data.path(split)}: {len(source)} images at {data.resolution}px", flush=True)


def build_from_args(args: argparse.Namespace) -> Path:
    from datasets import sources
    from datasets.beton import write_beton

    needs_root = args.source in ("cifar10", "imagefolder", "restricted_imagenet")
    if needs_root and not args.root:
        raise RobrepError(f"--source {args.source} needs --root (the folder to read)")
    if args.source == "digits":
        source = sources.digits(args.resolution, args.split, seed=args.seed)
    elif args.source == "synthetic":
        source = sources.synthetic(args.num_classes, args.per_class, args.resolution, args.seed)
    elif args.source == "cifar10":
        source = sources.cifar10(args.root, args.split)
    else:
        source = getattr(sources, args.source)(args.root)
        source = sources.scan(source, strict=args.strict, num_workers=args.num_workers)
    start = time.time()
    path = write_beton(
        args.out, source, write_mode=args.write_mode, max_resolution=args.max_resolution,
        jpeg_quality=args.jpeg_quality, compress_probability=args.compress_probability,
        num_workers=args.num_workers, augment=args.augment or DEFAULT_AUGMENT[args.source],
        info={"split": args.split},
    )
    print(f"[data] wrote {path}: {len(source)} images, {len(source.label_names)} classes, "
          f"{len(source.skipped)} files skipped, {time.time() - start:.1f}s", flush=True)
    for item in source.skipped[:10]:
        print(f"[data] skipped {item['path']}: {item['reason']}", flush=True)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=SOURCES, required=True)
    parser.add_argument("--out", required=True, help="the .beton to write; its sidecar goes beside it")
    parser.add_argument("--root", help="the source folder (imagefolder, restricted_imagenet, cifar10)")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--max-resolution", type=int, default=None, help="resize so the longer side <= this")
    parser.add_argument("--write-mode", choices=("raw", "jpg", "proportion", "smart"), default="raw")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--compress-probability", type=float, default=0.5, help="for --write-mode proportion")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--augment", choices=("rrc_flip", "crop_flip", "translate", "none"), default=None,
                        help="the loaders' default train augmentation (default: by source)")
    parser.add_argument("--strict", action="store_true", help="a corrupt or unreadable file is an error")
    parser.add_argument("--resolution", type=int, default=32, help="digits and synthetic only")
    parser.add_argument("--num-classes", type=int, default=10, help="synthetic only")
    parser.add_argument("--per-class", type=int, default=20, help="synthetic only")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(config: ExperimentConfig) -> None:
    build(config.data, force=True)


if __name__ == "__main__":
    if "--config" in sys.argv:
        run_entry_point(main, __doc__)
    else:
        exit_on_error(lambda argv: build_from_args(parse(argv)))
