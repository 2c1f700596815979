"""Build the experiment's dataset as FFCV `.beton` files: `python -m jobs.build_dataset --config X.yaml`."""

from __future__ import annotations

from jobs.common import run_entry_point
from jobs.config import DataSpec, ExperimentConfig


def build(data: DataSpec, force: bool = False) -> None:
    """Write <data.dir>/{train,test}.beton unless both exist (idempotent)."""
    from datasets.beton import write_beton
    from datasets.digits import LABEL_NAMES, NUM_CLASSES, load_digits_rgb, split_indices

    if not force and data.path("train").is_file() and data.path("test").is_file():
        print(f"[data] {data.path('train').parent} already holds train.beton and test.beton", flush=True)
        return
    images, labels = load_digits_rgb(data.resolution)
    train_idx, test_idx = split_indices(labels, data.test_fraction, data.split_seed)
    for split, idx in (("train", train_idx), ("test", test_idx)):
        info = {"source": "sklearn.datasets.load_digits", "split": split, "num_classes": NUM_CLASSES,
                "label_names": LABEL_NAMES, "split_seed": data.split_seed}
        write_beton(data.path(split), images[idx], labels[idx], info=info)
        print(f"[data] wrote {data.path(split)}: {len(idx)} images at {data.resolution}px", flush=True)


def main(config: ExperimentConfig) -> None:
    build(config.data, force=True)


if __name__ == "__main__":
    run_entry_point(main, __doc__)
