"""Which rows the report shows: per kind, the block settings of the last run (rows built in memory)."""


import numpy as np
import pandas as pd
import pytest


def _rows_of(jobs, run_id: str, at: int) -> list[dict]:
    """Result rows as a worker writes them, for jobs committed in run `run_id` at time `at`."""
    return [{**job.columns(), "run_id": run_id, "created_at": pd.Timestamp(at, unit="s", tz="UTC"),
             "rep_dist_rel": 0.1, "init": job.init, "target_class": 0, "source_class": 1} for job in jobs]


def test_figures_and_summary_use_the_setting_run_last():
    """A store holding two runs of one kind (a tuned rerun with another step size) gives one row per figure cell."""
    from robrep.report import latest_setting, summary_table

    rows = pd.DataFrame({
        "model_id": ["m"] * 4 + ["n"], "kind": ["invert"] * 4 + ["top_activating"], "model_digest": ["d"] * 5,
        "constraint": ["l2"] * 4 + [None], "eps": [1.0] * 4 + [np.nan], "step_size": [0.1, 0.1, 0.3, 0.3, np.nan],
        "steps": [10] * 4 + [0], "created_at": pd.to_datetime([1, 2, 3, 4, 1]), "init": ["image"] * 5,
        "target_index": [0, 1, 0, 1, 0], "source_class": [1] * 5, "target_class": [2] * 5,
        "rep_dist_rel": [0.5, 0.5, 0.1, 0.1, np.nan], "pix_dist_target": [1.0] * 5, "pix_dist_source": [2.0] * 5})
    kept = latest_setting(rows)
    assert list(kept.index) == [2, 3, 4]
    summary = summary_table(pd.DataFrame(), kept)
    assert summary.loc[0, "jobs"] == 2 and summary.loc[0, "mean_rep_dist_rel"] == pytest.approx(0.1)


def test_the_setting_run_last_is_per_block_so_a_sweep_keeps_every_radius():
    """Run 1: a sweep over six radii and an invert block (20 steps) on two models. Run 2: two invert blocks (50
    and 100 steps) and the same sweep, committed in run 1 and skipped. Kept: all of the sweep, both of run 2's
    invert blocks, none of run 1's 20-step inversions; the report draws each block apart."""
    from robrep.fanout.registry import get_kind, run_settings
    from robrep.report import blocks, latest_setting

    def jobs(kind, radii=(1000.0,), steps=20, models=("m", "n")):
        return [get_kind(kind).job(model_id=model, dataset="digits", split="test", model_digest=f"d-{model}",
                                   constraint="l2", step_size=0.1, steps=steps, eps=r, target_index=t, init="image",
                                   source_index=t + 1)
                for model in models for r in radii for t in range(3)]

    radii = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    sweep, old = jobs("invert_sweep", radii), jobs("invert")
    new_a, new_b = jobs("invert", steps=50), jobs("invert", steps=100)
    rows = pd.DataFrame(_rows_of(sweep + old, "r1", 1) + _rows_of(new_a + new_b, "r2", 2))
    manifests = [{"run_id": "r1", "finished_at": "2026-01-01T00:00:01", "settings": run_settings(sweep + old)},
                 {"run_id": "r2", "finished_at": "2026-01-01T00:00:02",
                  "settings": run_settings(sweep + new_a + new_b)}]
    kept = latest_setting(rows, manifests)
    swept = kept[kept["kind"] == "invert_sweep"]
    assert len(swept) == len(sweep) == 2 * 6 * 3 and sorted(set(swept["eps"].round(3))) == list(radii)
    inverted = kept[kept["kind"] == "invert"]
    assert sorted(set(inverted["steps"])) == [50, 100] and len(inverted) == 2 * 2 * 3
    assert [sorted(set(b["steps"])) for b in blocks(inverted)] == [[100], [50]]  # one figure per block, both models
    assert all(set(b["model_id"]) == {"m", "n"} for b in blocks(inverted))
    # Without manifests (rows built in memory): per model and kind, the setting of the newest row; a radius is not
    # a setting of its own.
    fallback = latest_setting(rows)
    assert len(fallback[fallback["kind"] == "invert_sweep"]) == len(sweep)
    assert set(fallback[fallback["kind"] == "invert"]["steps"]) <= {50, 100}


def test_without_manifests_a_block_on_other_data_keeps_the_blocks_on_the_models_data():
    """A store from before manifests had settings: invert rows on digits, then (committed later) on glyphs
    (targets_from). Both stay: the newest setting is chosen per model, kind and dataset, so Fig. 3 keeps its rows."""
    from robrep.fanout.registry import get_kind
    from robrep.report import latest_setting

    def jobs(dataset, split, in_distribution):
        return [get_kind("invert").job(model_id="m", dataset=dataset, split=split, model_digest="d", constraint="l2",
                                       eps=1000.0, step_size=0.1, steps=20, target_index=t, init="noise",
                                       in_distribution=in_distribution) for t in range(3)]

    rows = pd.DataFrame(_rows_of(jobs("digits", "test", True), "r1", 1) + _rows_of(jobs("glyphs", "glyphs", False),
                                                                                      "r1", 2))
    kept = latest_setting(rows)
    assert len(kept) == 6 and sorted(kept["dataset"].unique()) == ["digits", "glyphs"]
