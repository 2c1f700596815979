"""The report's tables and an empty store's report, from rows built in memory."""


import pandas as pd


def test_judged_table_shows_only_what_the_judge_measures():
    """Inversions and interpolations aimed at a target, from noise or another class, per start (and lambda); not
    sweeps (held near their source), top_activating (real images), nor a start of the target's own class."""
    from robrep.report import judged_table

    def rows(kind, init, source_class, n=2, lam=float("nan")):
        return [{"kind": kind, "model_id": "m", "init": init, "source_class": source_class, "target_class": 0,
                 "judge_pred": 0, "judge_model_id": "j", "lam": lam, "split": "test"}] * n

    frame = pd.DataFrame(rows("invert", "image", 1) + rows("invert", "image", 0) + rows("invert", "noise", -1)
                         + rows("invert_sweep", "image", 1) + rows("top_activating", None, -1)
                         + rows("interpolate", "interp", 1, lam=0.5) + rows("interpolate", "interp", 1, lam=1.0))
    table = judged_table(frame)
    assert sorted(zip(table["kind"], table["init"], table["lam"].fillna(-1), table["rows"], strict=True)) == [
        ("interpolate", "interp", 0.5, 2), ("interpolate", "interp", 1.0, 2), ("invert", "image", -1, 2),
        ("invert", "noise", -1, 2)]


def test_report_on_an_empty_store_says_what_is_missing(tmp_path):
    from robrep.report import build_report

    report = build_report(str(tmp_path / "empty"), tmp_path / "report")
    assert not report.figures
    assert {"models", "invert rows", "invert_sweep rows", "results"} <= set(report.missing)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Missing: invert_sweep rows" in page
