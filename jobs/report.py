"""A self-contained HTML report built from the store alone, with each figure also written as a PNG.

    python -m jobs.report --store runs/digits/store --out runs/digits/report
    python -m jobs.report --config jobs/configs/digits.yaml          # the experiment's store; out: <store>/../report

Sections: the models table (paper Table 4/5), inversion grids robust vs standard (Fig. 3/6), the Fig. 4
curve, feature visualizations (Fig. 7), manipulations (Fig. 11), interpolation strips (Fig. 12), top- and
bottom-activating images (Fig. 8), tuning trials, and the summary numbers. A section whose rows are not
in the store says so and what to run; an empty store gives a report of such notes.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
from pathlib import Path

import pandas as pd

from robrep.errors import RobrepError
from robrep.figures import labelled_grid, line_chart
from robrep.store import read_table

MAX_ROWS = 6  # figure rows per model


class Report:
    def __init__(self, out: Path):
        self.out, self.parts, self.figures, self.missing = out, [], [], []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        self.parts.append(f"<p class='note'>{html.escape(text)}</p>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def missing_section(self, what: str, how: str) -> None:
        self.missing.append(what)
        self.note(f"Missing: {what} — {how}")

    def table(self, frame: pd.DataFrame) -> None:
        self.parts.append(frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="—", border=0))

    def figure(self, name: str, image, caption: str) -> None:
        path = self.out / f"{name}.png"
        image.save(path)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode()
        self.figures.append(path)
        self.parts.append(f"<figure id='{name}'><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def write(self, title: str) -> Path:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
                 "td,th{padding:2px 8px;border-bottom:1px solid #ddd}.note{color:#a33}img{image-rendering:pixelated}")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(self.parts)}</body></html>")
        path = self.out / "report.html"
        path.write_text(page)
        return path


def _image_lookup(images: pd.DataFrame) -> dict[tuple[str, int], bytes]:
    return {(row.split, int(row.index)): row.image_png for row in images.itertuples()}


def _models_table(report: Report, models: pd.DataFrame, evaluations: pd.DataFrame) -> None:
    report.heading("Models (paper Table 4/5)")
    if models.empty:
        report.missing_section("models", "train some with python -m jobs.train")
        return
    table = models[["model_id", "arch", "dataset", "robust", "eps", "clean_acc", "adv_acc", "adv_eps", "adv_steps",
                    "epochs"]].rename(columns={"clean_acc": "Standard", "adv_acc": "Adversarial"})
    report.table(table)
    if not evaluations.empty:
        report.text("jobs.evaluate runs:")
        report.table(evaluations[["model_id", "clean_acc", "adv_acc", "constraint", "eps", "steps", "step_size",
                                  "restarts", "n"]])


def _inversions(report: Report, results: pd.DataFrame, lookup: dict) -> None:
    report.heading("Inversion: robust vs standard (Fig. 3 and 6)")
    rows = results[results["kind"] == "invert"]
    if rows.empty:
        report.missing_section("invert rows", "add a {kind: invert} block to fanout.jobs")
        return
    models = sorted(rows["model_id"].unique())
    for init, caption in (("image", "Fig. 3: from a test image of another class"), ("noise", "Fig. 6: from noise")):
        part = rows[rows["init"] == init]
        targets = sorted(part["target_index"].unique())[:MAX_ROWS]
        if not targets:
            report.missing_section(f"invert rows from init={init}", f"add {init} to the invert block's inits")
            continue
        cells, labels = [], []
        for t in targets:
            by_model = part[part["target_index"] == t].set_index("model_id")
            source = int(by_model["source_index"].iloc[0])
            row = [lookup.get((by_model["split"].iloc[0], int(t))),
                   lookup.get((by_model["split"].iloc[0], source)) if source >= 0 else None]
            row += [by_model.loc[m, "image_png"] if m in by_model.index else None for m in models]
            cells.append(row)
            labels.append(f"t={t}")
        report.figure(f"inversion_{init}", labelled_grid(cells, labels, ["target", "source", *models]), caption)


def _sweep(report: Report, results: pd.DataFrame) -> None:
    report.heading("Constrained inversion: rep_dist_rel against radius (Fig. 4)")
    rows = results[results["kind"] == "invert_sweep"]
    if rows.empty:
        report.missing_section("invert_sweep rows", "add a {kind: invert_sweep, radii: [...]} block")
        return
    curve = rows.groupby(["model_id", "eps"])["rep_dist_rel"].mean().reset_index()
    series = {f"{m}{' (robust)' if rows[rows['model_id'] == m]['model_robust'].iloc[0] else ''}":
              list(zip(g["eps"], g["rep_dist_rel"], strict=True)) for m, g in curve.groupby("model_id")}
    report.figure("fig4_sweep", line_chart(series, "L2 radius around the source", "mean rep_dist_rel"),
                  "Fig. 4: the lowest representation distance reachable within each radius, averaged over pairs")
    report.table(curve.pivot(index="eps", columns="model_id", values="rep_dist_rel").reset_index())


def _visualizations(report: Report, results: pd.DataFrame, lookup: dict) -> None:
    report.heading("Feature visualization (Fig. 7)")
    rows = results[results["kind"] == "visualize"]
    if rows.empty:
        report.missing_section("visualize rows", "add a {kind: visualize} block")
        return
    for model_id, part in rows.groupby("model_id"):
        starts = part[["init", "source_index"]].drop_duplicates().head(MAX_ROWS)
        coords = sorted(part["coordinate"].unique())[:8]
        cells, labels = [], []
        for start in starts.itertuples():
            same = part[(part["init"] == start.init) & (part["source_index"] == start.source_index)]
            by_coord = dict(zip(same["coordinate"], same["image_png"], strict=True))
            seed = lookup.get((same["split"].iloc[0], int(start.source_index))) if start.source_index >= 0 else None
            cells.append([seed, *(by_coord.get(c) for c in coords)])
            labels.append(start.init)
        report.figure(f"fig7_visualize_{model_id}", labelled_grid(cells, labels, ["start", *[f"#{c}" for c in coords]]),
                      f"Fig. 7, {model_id}: each row maximises the columns' coordinates from the same start")


def _manipulations(report: Report, results: pd.DataFrame, lookup: dict) -> None:
    report.heading("Feature manipulation (Fig. 11)")
    rows = results[results["kind"] == "manipulate"]
    if rows.empty:
        report.missing_section("manipulate rows", "add a {kind: manipulate} block")
        return
    models = sorted(rows["model_id"].unique())
    pairs = rows[["source_index", "coordinate"]].drop_duplicates().head(MAX_ROWS)
    cells, labels = [], []
    for pair in pairs.itertuples():
        same = rows[(rows["source_index"] == pair.source_index) & (rows["coordinate"] == pair.coordinate)]
        by_model = same.set_index("model_id")
        cells.append([lookup.get((same["split"].iloc[0], int(pair.source_index))),
                      *(by_model.loc[m, "image_png"] if m in by_model.index else None for m in models)])
        steps = ", ".join(f"{m}: {int(by_model.loc[m, 'steps_taken'])}" for m in models if m in by_model.index)
        labels.append(f"#{pair.coordinate}")
        report.text(f"image {pair.source_index}, coordinate {pair.coordinate}: steps before the stop rule — {steps}")
    report.figure("fig11_manipulate", labelled_grid(cells, labels, ["original", *models]),
                  "Fig. 11: the feature added until it exceeds every other coordinate")


def _interpolations(report: Report, results: pd.DataFrame) -> None:
    report.heading("Interpolation (Fig. 12)")
    rows = results[results["kind"] == "interpolate"]
    if rows.empty:
        report.missing_section("interpolate rows", "add a {kind: interpolate} block")
        return
    cells, labels = [], []
    for (model_id, target), strip in rows.groupby(["model_id", "target_index"]):
        strip = strip.sort_values("lam")
        cells.append(list(strip["image_png"]))
        labels.append(f"{model_id[:14]} t={target}")
        lams = [f"{v:.2f}" for v in strip["lam"]]
        if len(cells) >= 2 * MAX_ROWS:
            break
    report.figure("fig12_interpolate", labelled_grid(cells, labels, lams),
                  "Fig. 12: inverting lambda R(x1) + (1 - lambda) R(x2); lambda = 0 is the other image")


def _top_activating(report: Report, results: pd.DataFrame) -> None:
    report.heading("Most and least activating images (Fig. 8)")
    rows = results[results["kind"] == "top_activating"]
    if rows.empty:
        report.missing_section("top_activating rows", "add a {kind: top_activating} block")
        return
    for model_id, part in rows.groupby("model_id"):
        cells, labels = [], []
        for coordinate, same in part.groupby("coordinate"):
            ordered = same.sort_values("split_rank")
            cells.append(list(ordered["image_png"]))
            labels.append(f"#{coordinate}")
        k = len(cells[0]) // 2
        report.figure(f"fig8_top_{model_id}", labelled_grid(cells, labels, [*(["top"] * k), *(["bottom"] * k)]),
                      f"Fig. 8, {model_id}: the {k} most (left) and {k} least (right) activating test images")


def _summary(report: Report, results: pd.DataFrame, models: pd.DataFrame, tune: pd.DataFrame) -> None:
    report.heading("Summary numbers")
    if results.empty:
        report.missing_section("results", "run python -m jobs.fanout")
    else:
        counts = results.groupby(["kind", "model_id"]).size().rename("rows").reset_index()
        report.table(counts)
        inv = results[results["kind"] == "invert"]
        if not inv.empty:
            other = inv[(inv["init"] == "image") & (inv["source_class"] != inv["target_class"])]
            stats = inv.groupby("model_id")[["rep_dist_rel", "pix_dist_target"]].mean()
            stats["other_class_nearer_target"] = (other["pix_dist_target"] < other["pix_dist_source"]).groupby(
                other["model_id"]).mean()
            report.table(stats.reset_index())
    report.heading("Tuning (jobs.tune)")
    if tune.empty:
        report.missing_section("tune_trials", "run python -m jobs.tune")
    else:
        report.table(tune[["run_id", "model_id", "objective", "step_size", "steps", "steps_done", "metric"]]
                     .sort_values("metric"))


def build_report(store: str, out: str | Path) -> Report:
    """Write <out>/report.html and a PNG per figure; returns the Report (figures, missing sections)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    models, results = read_table(store, "models"), read_table(store, "results")
    lookup = _image_lookup(read_table(store, "images"))
    _models_table(report, models, read_table(store, "evaluations"))
    _inversions(report, results, lookup)
    _sweep(report, results)
    _visualizations(report, results, lookup)
    _manipulations(report, results, lookup)
    _interpolations(report, results)
    _top_activating(report, results)
    _summary(report, results, models, read_table(store, "tune_trials"))
    report.path = report.write(f"robrep report: {store}")
    return report


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="the store root")
    source.add_argument("--config", help="an experiment config: its store")
    parser.add_argument("--out", help="output folder (default: beside the store, 'report')")
    args = parser.parse_args(argv)
    if args.config:
        from jobs.config import load_config

        store = load_config(args.config).store_root
    else:
        store = args.store
    out = args.out or str(Path(store).parent / "report") if "://" not in store else args.out
    if out is None:
        raise RobrepError("--out is required when the store is a URI")
    report = build_report(store, out)
    print(f"[report] {len(report.figures)} figures, {len(report.missing)} sections missing: {report.path}", flush=True)


if __name__ == "__main__":
    from jobs.common import exit_on_error

    exit_on_error(main)
