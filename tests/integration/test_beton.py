"""Real .beton files: the digits round trip through FFCV's writer and loader."""

import numpy as np
import pytest
import torch

from datasets.beton import make_loader, read_all, read_info, write_beton
from datasets.digits import load_digits_rgb, split_indices
from datasets.sources import _array_source
from robrep.core.errors import DataError

pytestmark = pytest.mark.ffcv


def test_digits_round_trip_labels_and_pixels(tmp_path):
    images, labels = load_digits_rgb(16)
    train, test = split_indices(labels, 0.2, rng_seed=0)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == len(labels) == 1797
    path = write_beton(tmp_path / "test.beton", _array_source("digits", images[test], labels[test], list("0123456789")))
    x, y = read_all(path)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(y, torch.from_numpy(labels[test]))
    back = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(back, images[test])
    info = read_info(path)
    assert info["num_images"] == len(test) and sum(info["counts_per_class"]) == len(test)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_grey_dataset_reads_as_one_channel_and_its_pngs_are_grey(tmp_path):
    """digits is grey: its sidecar says channels 1, its loaders give (B, 1, H, W), a result image is a grey PNG."""
    from datasets.sources import digits
    from robrep.images import decode_png, encode_png

    path = write_beton(tmp_path / "g.beton", digits(16, "test"))
    info = read_info(path)
    assert info["channels"] == 1 and len(info["mean"]) == len(info["std"]) == 1
    x, _ = read_all(path)
    train = next(iter(make_loader(path, 32, train=True)))[0]
    assert x.shape[1:] == train.shape[1:] == (1, 16, 16)
    png = encode_png(x[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and decode_png(png).shape == (16, 16, 3)
    assert (decode_png(png)[..., 0] == (x[0, 0] * 255).round().byte().numpy()).all()


def test_train_loader_shuffles_and_drops_last(tmp_path):
    images, labels = load_digits_rgb(16)
    path = write_beton(tmp_path / "d.beton", _array_source("digits", images[:100], labels[:100], list("0123456789")))
    loader = make_loader(path, 32, train=True, rng_seed=1)
    batches = [y.clone() for _, y in loader]
    assert [len(b) for b in batches] == [32, 32, 32]
    assert not torch.equal(torch.cat(batches), torch.from_numpy(labels[:96]))


def test_missing_dataset_names_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        make_loader(tmp_path / "nope.beton", 8, train=False)
