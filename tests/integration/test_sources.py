"""Dataset sources written to real .beton files: ImageFolder trees with awkward files, CIFAR-10's
python folder, Restricted ImageNet's class mapping, loaders, and distributed shards."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import sources
from datasets.beton import make_loader, read_all, read_indices, read_info, write_beton
from robrep.core.errors import DataError

pytestmark = pytest.mark.ffcv


def random_rgb(rng, size=16):
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def tree(tmp_path):
    """root/<class>/<files>: PNG and JPEG, one grayscale, one CMYK, one RGBA, one corrupt, one non-image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for c in ("n01", "n02", "n03"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(random_rgb(rng)).save(root / c / f"{i}.png")
        Image.fromarray(random_rgb(rng)).save(root / c / "j.JPEG", quality=95)
    Image.fromarray(random_rgb(rng)[..., 0]).save(root / "n01" / "gray.png")  # mode L
    Image.fromarray(random_rgb(rng)).convert("CMYK").save(root / "n02" / "cmyk.jpg")
    rgba = np.concatenate([random_rgb(rng), np.full((16, 16, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(root / "n03" / "alpha.png")
    (root / "n03" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "n03" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_round_trip_skips_and_reports_corrupt_files(tree, tmp_path):
    source = sources.scan(sources.imagefolder(tree), strict=False, num_workers=2, progress=False)
    assert len(source) == 15 and source.label_names == ["n01", "n02", "n03"]
    assert [s["path"].endswith("corrupt.png") for s in source.skipped] == [True]
    expected = np.stack([sources.load_rgb(f) for f in source.files])  # what the writer stored, decoded once
    path = write_beton(tmp_path / "t.beton", source, write_mode="raw")
    x, y = read_all(path)
    assert torch.equal(y, torch.from_numpy(source.labels))
    np.testing.assert_array_equal((x * 255).round().byte().permute(0, 2, 3, 1).numpy(), expected)
    info = read_info(path)
    assert info["counts_per_class"] == [5, 5, 5] and info["skipped"][0]["path"].endswith("corrupt.png")
    assert len(info["mean"]) == 3 and all(0 < s < 1 for s in info["std"])
    assert not list(tmp_path.glob("*.tmp"))


def test_awkward_modes_are_converted(tree):
    gray = sources.load_rgb(tree / "n01" / "gray.png")
    assert gray.shape == (16, 16, 3) and (gray[..., 0] == gray[..., 1]).all()
    assert sources.load_rgb(tree / "n02" / "cmyk.jpg").shape == (16, 16, 3)
    alpha = sources.load_rgb(tree / "n03" / "alpha.png")
    assert alpha.shape == (16, 16, 3) and alpha.min() >= 127  # half-transparent over white


def test_strict_mode_names_the_bad_file(tree):
    with pytest.raises(DataError, match="corrupt.png"):
        sources.scan(sources.imagefolder(tree), strict=True, num_workers=1, progress=False)


def test_missing_root_and_empty_class_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        sources.imagefolder(tmp_path / "absent")
    (tmp_path / "root" / "n01").mkdir(parents=True)
    with pytest.raises(DataError, match="n01 holds no image files"):
        sources.imagefolder(tmp_path / "root")


def test_jpeg_mode_is_close_and_rrc_loader_gives_fixed_size(tree, tmp_path):
    source = sources.scan(sources.imagefolder(tree), strict=False, num_workers=1, progress=False)
    path = write_beton(tmp_path / "j.beton", source, write_mode="jpg", jpeg_quality=95, augment="rrc_flip")
    train = [x.clone() for x, _ in make_loader(path, 4, train=True, resolution=12)]
    assert all(x.shape == (4, 3, 12, 12) for x in train) and len(train) == 3  # drop_last
    val_a, _ = read_indices(path, [4, 0, 4])
    val_b, _ = read_indices(path, [0])
    assert val_a.shape == (3, 3, 16, 16)
    torch.testing.assert_close(val_a[1], val_b[0])  # deterministic, in the order asked for
    torch.testing.assert_close(val_a[0], val_a[2])
    with pytest.raises(DataError, match="out of range"):
        read_indices(path, [15])


def fake_cifar(root, n=20):
    rng = np.random.default_rng(0)
    root.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batches[name] = (data, labels)
        (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"}))
    names = [n.encode() for n in ("airplane automobile bird cat deer dog frog horse ship truck").split()]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return batches


def test_cifar10_python_folder_round_trip(tmp_path):
    batches = fake_cifar(tmp_path / "cifar-10-batches-py")
    source = sources.cifar10(tmp_path, "test")
    path = write_beton(tmp_path / "c.beton", source)
    x, y = read_all(path)
    data, labels = batches["test_batch"]
    assert y.tolist() == labels
    expected = data.reshape(-1, 3, 32, 32)  # CIFAR stores channel planes
    np.testing.assert_array_equal((x * 255).round().byte().numpy(), expected)
    assert len(sources.cifar10(tmp_path, "train")) == 100
    assert read_info(path)["label_names"][0] == "airplane"


def test_cifar_pickles_cannot_run_code(tmp_path):
    fake_cifar(tmp_path / "c")

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match=r"refusing (posix|os)\.system in a CIFAR batch file"):
        sources.cifar10(tmp_path / "c", "test")
    assert not marker.exists()


def test_restricted_imagenet_maps_203_classes_to_9(tmp_path):
    root = tmp_path / "imagenet"
    pixel = np.zeros((4, 4, 3), np.uint8)
    for i in range(1000):
        (root / f"n{i:08d}").mkdir(parents=True)
        Image.fromarray(pixel).save(root / f"n{i:08d}" / "a.png")
    source = sources.restricted_imagenet(root)
    assert len(source) == 203 and len(set(f.parent for f in source.files)) == 203
    assert source.label_names == ["dog", "cat", "frog", "turtle", "bird", "primate", "fish", "crab", "insect"]
    folder_label = {int(f.parent.name[1:]): int(y) for f, y in zip(source.files, source.labels, strict=True)}
    assert folder_label[151] == folder_label[268] == 0 and 150 not in folder_label and 269 not in folder_label
    assert folder_label[30] == 2 and folder_label[37] == 3 and folder_label[397] == 6 and folder_label[319] == 8
    assert np.bincount(source.labels).tolist() == [118, 5, 3, 5, 21, 18, 9, 4, 20]
    (root / "n00000999" / "a.png").unlink()
    (root / "n00000999").rmdir()
    with pytest.raises(DataError, match="999 class folders"):
        sources.restricted_imagenet(root)


def _read_shard(rank, path, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    labels = [y.clone() for _, y in make_loader(path, 8, train=True, distributed=True, rng_seed=3)]
    torch.save(torch.cat(labels), f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_shards_that_cover_the_set(tmp_path):
    source = sources.synthetic(num_classes=64, per_class=1, resolution=8)  # label == index
    path = write_beton(tmp_path / "s.beton", source)
    torch.multiprocessing.spawn(_read_shard, args=(str(path), str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    rank0, rank1 = (set(torch.load(tmp_path / f"rank{r}.pt", weights_only=True).tolist()) for r in (0, 1))
    assert len(rank0) == len(rank1) == 32
    assert not rank0 & rank1 and rank0 | rank1 == set(range(64))


def test_a_huge_image_is_skipped_before_it_is_decoded(tree):
    """A 200-megapixel file (a decompression bomb, or a scan at full resolution) is skipped with its reason;
    the build goes on with the rest."""
    Image.new("1", (20_000, 10_000)).save(tree / "n01" / "huge.png")  # 200 MP, a few kB on disk
    source = sources.scan(sources.imagefolder(tree), strict=False, num_workers=2, progress=False)
    reasons = {Path(s["path"]).name: s["reason"] for s in source.skipped}
    assert "huge.png" in reasons and "pixels" in reasons["huge.png"]  # refused by size, before decoding
    assert len(source) == 15
