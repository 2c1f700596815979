"""Benchmark: FFCV's Loader against torch's DataLoader with equivalent augmentation on the same data.

    .venv/bin/python bench/loader.py [--images 2048] [--workers 2]

(a) 32 px: synthetic CIFAR-like images; FFCV raw .beton with random crop (padding 4) + flip, against
    a DataLoader over the same uint8 array with RandomCrop(32, padding=4) + RandomHorizontalFlip.
(b) 224 px JPEG: a folder of 256 px JPEGs; FFCV jpg .beton with RandomResizedCrop(224) + flip, against
    torchvision ImageFolder with RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor.
Both produce [0,1] float batches. Ratios are FFCV images/s over DataLoader images/s; the last line is
the lower of the two.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import sources  # noqa: E402
from datasets.beton import make_loader, write_beton  # noqa: E402


def images_per_second(iterable, epochs: int = 2) -> float:
    for _ in iterable:  # warm up (FFCV compiles its pipeline on the first epoch)
        pass
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for x, _y in iterable:
            seen += len(x)
    return seen / (time.perf_counter() - start)


class _ArrayDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(torch.from_numpy(self.images[i]).permute(2, 0, 1)), int(self.labels[i])


def bench_32px(n: int, workers: int, tmp: Path) -> float:
    import torchvision.transforms.v2 as T

    source = sources.synthetic(num_classes=10, per_class=n // 10, resolution=32)
    path = write_beton(tmp / "c.beton", source, augment="crop_flip", num_workers=workers)
    ffcv = images_per_second(make_loader(path, 256, train=True, num_workers=workers))
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True)])
    dataset = _ArrayDataset(source.images, source.labels, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=True)
    torch_ips = images_per_second(loader)
    print(f"32px raw: ffcv {ffcv:,.0f} img/s, torch DataLoader {torch_ips:,.0f} img/s, ratio {ffcv / torch_ips:.2f}")
    return ffcv / torch_ips


def bench_224px_jpeg(n: int, workers: int, tmp: Path) -> float:
    import torchvision
    import torchvision.transforms as T
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp / "jpegs"
    for c in range(8):
        (root / f"n{c:02d}").mkdir(parents=True)
        base = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        for i in range(n // 8):  # smooth-ish images, so JPEG sizes are realistic
            small = np.clip(base.astype(int) + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(small).resize((256, 256), Image.BILINEAR).save(root / f"n{c:02d}" / f"{i}.jpg", quality=90)
    source = sources.scan(sources.imagefolder(root), strict=True, num_workers=workers, progress=False)
    path = write_beton(tmp / "in.beton", source, write_mode="jpg", augment="rrc_flip", num_workers=workers)
    ffcv = images_per_second(make_loader(path, 64, train=True, num_workers=workers, resolution=224), epochs=1)
    transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    loader = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(root, transform), batch_size=64,
                                         shuffle=True, drop_last=True, num_workers=workers, persistent_workers=True)
    torch_ips = images_per_second(loader, epochs=1)
    print(f"224px jpg: ffcv {ffcv:,.0f} img/s, torch DataLoader {torch_ips:,.0f} img/s, ratio {ffcv / torch_ips:.2f}")
    return ffcv / torch_ips


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4096, help="32 px images (the 224 px set is a quarter)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = bench_32px(args.images, args.workers, Path(tmp))
        large = bench_224px_jpeg(args.images // 4, args.workers, Path(tmp))
    print(f"ratio: {min(small, large):.2f}")


if __name__ == "__main__":
    main()
