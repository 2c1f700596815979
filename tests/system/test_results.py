"""The numbers the store holds, checked against independent calculations on the session's trained pair:
the training attack makes a robust model, sweeps stay in their radius, interpolation targets are Eq. 6,
top_activating ranks are the split's."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytestmark = [pytest.mark.ray, pytest.mark.ffcv, pytest.mark.slow]

QUANTUM = 0.5 / 255  # a PNG pixel is off by at most half a level per channel


def pixels(png: bytes) -> torch.Tensor:
    """PNG bytes -> (C, H, W) float in [0, 1], decoded here without robrep: C = 1 for a grey PNG (the digits)."""
    image = Image.open(io.BytesIO(png))
    array = np.asarray(image.convert("L" if image.mode == "L" else "RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def store(trained_pair):
    tmp, _ = trained_pair
    results = pd.read_parquet(tmp / "store" / "results")
    images = pd.read_parquet(tmp / "store" / "images").set_index("index")
    models = pd.read_parquet(tmp / "store" / "models").set_index("model_id")
    return tmp, results, images, models


def load(models: pd.DataFrame, model_id: str):
    from robrep.checkpoint import load_checkpoint

    return load_checkpoint(models.loc[model_id, "checkpoint"])[0]


def test_adversarial_training_makes_the_robust_model_robust(store):
    _, _, _, models = store
    robust, standard = models.loc["digits_robust"], models.loc["digits_standard"]
    assert bool(robust["robust"]) and not bool(standard["robust"])
    assert robust["adv_acc"] >= standard["adv_acc"] + 0.1, (robust["adv_acc"], standard["adv_acc"])


def test_sweep_results_stay_within_their_radius_around_the_source(store):
    _, results, images, _ = store
    sweep = results[results["kind"] == "invert_sweep"]
    assert len(sweep) == 4 and set(sweep["eps"]) == {0.5, 2.0}
    for row in sweep.itertuples():
        result, source = pixels(row.image_png), pixels(images.loc[row.source_index, "image_png"])
        assert result.shape == source.shape == (1, 16, 16)  # grey digits: one channel
        slack = QUANTUM * np.sqrt(result.numel()) * 2  # the result and the source are both 8-bit
        moved = (result - source).norm()
        assert moved <= row.eps + slack, (row.eps, float(moved))
        assert row.pix_dist_source <= row.eps * (1 + 1e-5)
    # the smoke config travels up to 1.0 in pixels, so the 0.5 ball binds: the projection was exercised
    assert sweep[sweep["eps"] == 0.5]["pix_dist_source"].max() > 0.45


def test_interpolation_rows_measure_the_distance_to_eq6_targets(store):
    _, results, images, models = store
    rows = results[results["kind"] == "interpolate"]
    assert sorted(set(rows["lam"])) == [0.0, 0.5, 1.0]
    for model_id, part in rows.groupby("model_id"):
        model = load(models, model_id)
        for row in part.itertuples():
            with torch.no_grad():
                r1 = model.representation(pixels(images.loc[row.target_index, "image_png"])[None])[0]
                r2 = model.representation(pixels(images.loc[row.source_index, "image_png"])[None])[0]
                target = row.lam * r1 + (1 - row.lam) * r2  # Eq. 6
                rep = model.representation(pixels(row.image_png)[None])[0]
            expected = float((rep - target).norm() / target.norm())
            assert row.rep_dist_rel == pytest.approx(expected, abs=0.03), (model_id, row.lam)


def test_top_activating_rows_are_the_splits_extremes(store):
    tmp, results, _, _ = store
    reps = pd.read_parquet(tmp / "store" / "representations")
    rows = results[results["kind"] == "top_activating"]
    assert len(rows) == 2 * 2 * 4  # 2 models x 2 coordinates x (2 most + 2 least)
    for (model_id, coordinate), part in rows.groupby(["model_id", "coordinate"]):
        split = reps[reps["model_id"] == model_id].sort_values("index")
        values = np.stack(split["representation"].to_numpy())[:, coordinate]
        order = np.argsort(-values, kind="stable")
        n = len(values)
        for row in part.itertuples():
            assert row.activation == pytest.approx(values[row.target_index], rel=1e-6)
            assert values[order[int(row.split_rank)]] == pytest.approx(values[row.target_index], rel=1e-6)
        assert sorted(part["split_rank"]) == [0, 1, n - 2, n - 1]
