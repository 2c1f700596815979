"""The store at scale: compaction keeps the rows (one per row key, the latest) in a few big files, reads open only
the partitions a filter names and no footer before the data, the committed check reads job ids alone, images come
on demand, the writer's options fit images, and DuckDB, Polars and pyarrow.dataset read what pandas reads."""

import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import grow_store, result_rows, results_schema

from robrep.store import committed_job_ids, files, load_results, read_table
from robrep.store.commit import commit_part, commit_rows, part_name
from robrep.store.compact import compact
from robrep.store.files import SCHEMA_FILE
from robrep.store.read import load_images
from robrep.store.schema import HEAVY, RESULTS_SCHEMA, now_utc, to_table


def part_files(root):
    return sorted((root / "results").rglob("part-*.parquet"))


def sorted_rows(frame):
    return frame.sort_values(["job_id", "split_rank"]).reset_index(drop=True)


def test_compaction_keeps_every_row_once_the_latest_in_a_few_files(tmp_path):
    grow_store(tmp_path, parts=40)
    again = result_rows(["invert-m0-0-0"], model_id="m0")  # a row key committed twice: the later row wins
    again[0].update(eps=0.0, steps=0, rep_dist=-1.0)
    commit_rows(tmp_path, "results", again, ["invert-m0-0-0", "retry"], durable=False, schema=results_schema())
    before = sorted_rows(read_table(tmp_path, "results"))
    assert len(before) == 200 and before.set_index("job_id").loc["invert-m0-0-0", "rep_dist"] == -1.0
    assert len(part_files(tmp_path)) == 41

    done = compact(tmp_path, "results")
    assert sorted((c.folder, c.parts_before, c.parts_after, c.dropped) for c in done) == [
        ("results/kind=invert/model_id=m0", 21, 1, 1), ("results/kind=invert/model_id=m1", 20, 1, 0)]
    on_disk = pd.read_parquet(tmp_path / "results")
    assert len(on_disk) == 200 and on_disk["job_id"].is_unique  # exactly one row per key on disk, not just as read
    pd.testing.assert_frame_equal(sorted_rows(read_table(tmp_path, "results")), before)
    assert not list(tmp_path.rglob("*.tmp"))
    assert compact(tmp_path, "results") == []  # one file per folder: nothing to do

    compacted = [p.stat().st_size for p in part_files(tmp_path)]
    grow_store(tmp_path, parts=4, rows=3, first=100)  # new parts beside compacted files: only small ones are rewritten
    assert len(part_files(tmp_path)) == 6
    done = compact(tmp_path, "results", file_bytes=int(1.5 * min(compacted)))
    assert [c.rewritten for c in done] == [2, 2]  # the new parts; the files of more than half file_bytes stay
    assert len(part_files(tmp_path)) == 4 and len(read_table(tmp_path, "results")) == 212
    done = compact(tmp_path, "results")  # with the default size everything here is small: merged into one
    assert [c.rewritten for c in done] == [2, 2] and len(part_files(tmp_path)) == 2


def test_compacted_files_have_bounded_size_and_row_groups(tmp_path):
    grow_store(tmp_path, parts=60, rows=20, models=("m0",))
    size = sum(p.stat().st_size for p in part_files(tmp_path))
    compact(tmp_path, "results", file_bytes=size // 3, row_group_bytes=size // 12)
    files = part_files(tmp_path)
    assert 3 <= len(files) <= 4, [p.stat().st_size for p in files]  # about a third each, the last one smaller
    for path in files:
        meta = pq.read_metadata(path)
        assert meta.num_row_groups >= 2 and path.stat().st_size <= 1.2 * size // 3
    assert len(read_table(tmp_path, "results")) == 1200


def test_a_filter_on_partition_columns_opens_only_their_folders_and_no_footer_first(tmp_path, monkeypatch):
    grow_store(tmp_path, parts=12, kinds=("invert", "pairs"))
    damaged = tmp_path / "results" / "kind=pairs" / "model_id=m1" / "part-damaged.parquet"
    damaged.write_bytes(b"PAR1 not a parquet file")
    stray = tmp_path / "results" / "kind=pairs" / "notes.txt"
    stray.write_text("a file in no leaf folder")
    import robrep.store.read as read

    def no_footers(*args, **kwargs):
        raise AssertionError("a read opened the footers before reading")

    monkeypatch.setattr(read, "validate", no_footers)
    frame = load_results(tmp_path, filters=[("kind", "=", "invert"), ("model_id", "in", ["m0"])])
    assert len(frame) == 15 and set(frame["model_id"]) == {"m0"}
    assert damaged.exists() and stray.exists()  # kind=pairs never listed
    assert len(committed_job_ids(tmp_path, filters=[("kind", "=", "pairs"), ("model_id", "=", "m0")])) == 15
    monkeypatch.undo()
    everything = load_results(tmp_path)  # this read opens the damaged part: it fails, is checked, quarantined
    assert len(everything) == 60 and not damaged.exists() and not stray.exists()
    assert (tmp_path / "_quarantine" / "results" / "kind=pairs" / "model_id=m1" / "part-damaged.parquet").exists()


def test_a_store_without_its_column_record_reads_the_same(tmp_path):
    grow_store(tmp_path, parts=6)
    with_record = sorted_rows(load_results(tmp_path))
    assert {"eps", "steps"} <= set(with_record.columns)
    (tmp_path / "results" / SCHEMA_FILE).unlink()  # a store written before the record existed,
    files._recorded.clear()  # opened by a new process
    pd.testing.assert_frame_equal(sorted_rows(load_results(tmp_path)), with_record)
    grow_store(tmp_path, parts=2, models=("m2",))  # the first commit starts the record from the parts' footers
    assert {"eps", "steps"} <= set(pq.read_schema(tmp_path / "results" / SCHEMA_FILE).names)


def test_a_parameter_keeps_one_type(tmp_path):
    grow_store(tmp_path, parts=1)
    other = pa.schema([*RESULTS_SCHEMA, pa.field("eps", pa.string())])
    rows = result_rows(["z"])
    rows[0]["eps"] = "big"
    with pytest.raises(ValueError, match="column 'eps' is string in this commit but float"):
        commit_rows(tmp_path, "results", rows, ["z"], durable=False, schema=other)
    assert committed_job_ids(tmp_path) == {f"invert-m0-0-{i}" for i in range(5)}


def test_images_come_on_demand(tmp_path, monkeypatch):
    grow_store(tmp_path, parts=8)
    compact(tmp_path, "results", row_group_bytes=1)  # a row group per part: a fetch reads only those it needs
    frame = load_results(tmp_path)
    assert not set(HEAVY) & set(frame.columns)
    chosen = frame[frame["rep_dist"].isin([3.0, 31.0])].sort_values("rep_dist")  # parts 0 and 6, both of m0
    read_groups = []
    original = pq.ParquetFile.read_row_groups

    def spy(self, groups, *args, **kwargs):
        read_groups.extend(groups)
        return original(self, groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    with_images = load_images(tmp_path, chosen, decode=True)
    monkeypatch.undo()
    m0 = next((tmp_path / "results" / "kind=invert" / "model_id=m0").glob("part-*.parquet"))
    assert len(read_groups) == 2 and pq.read_metadata(m0).num_row_groups == 4  # of parts 0, 2, 4, 6: two read
    assert list(with_images.index) == list(chosen.index) and with_images["image"].iloc[0].shape == (8, 8, 3)
    full = load_results(tmp_path, images=True).set_index("job_id")
    assert list(with_images["image_png"]) == list(full.loc[chosen["job_id"], "image_png"])
    by_id = load_images(tmp_path, list(chosen["job_id"]))
    assert sorted(by_id["job_id"]) == sorted(chosen["job_id"]) and set(by_id["model_id"]) == {"m0"}
    from robrep.report.figures import image_grid

    assert image_grid(with_images, ncols=2).size[0] == 2 * 10
    with pytest.raises(ValueError, match="load_images"):
        image_grid(chosen)


def test_the_writer_keeps_statistics_off_images_and_on_what_people_filter_by(tmp_path):
    grow_store(tmp_path, parts=3)
    compact(tmp_path, "results")
    for path in part_files(tmp_path):
        group = pq.read_metadata(path).row_group(0)
        columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
        for heavy in ("image_png", "representation.list.element"):
            assert not columns[heavy].is_stats_set and "RLE_DICTIONARY" not in columns[heavy].encodings
        for filtered in ("eps", "init", "dataset", "target_index", "job_id"):
            assert columns[filtered].is_stats_set, filtered
        assert "RLE_DICTIONARY" in columns["init"].encodings


@pytest.fixture
def mixed_store(tmp_path):
    """Parts written before two columns existed (precision, in_distribution) beside later ones, a model_id that
    looks like a number, and a kind with its own parameters."""
    grow_store(tmp_path, parts=4, models=("007", "m1"))
    old = pa.schema([f for f in RESULTS_SCHEMA if f.name not in ("precision", "in_distribution")])
    commit_part(tmp_path, "results", to_table(result_rows(["old-a", "old-b"], "007"), old),
                {"kind": "invert", "model_id": "007"}, part_name(["old-a", "old-b"]))
    return tmp_path


@pytest.mark.parametrize("compacted", [False, True], ids=["parts", "compacted"])
def test_duckdb_polars_and_pyarrow_read_what_pandas_reads(mixed_store, compacted):
    import duckdb
    import polars as pl
    import pyarrow.dataset as pads

    if compacted:
        compact(mixed_store, "results")
    results = mixed_store / "results"
    expected = load_results(mixed_store)
    assert len(expected) == 22 and expected["model_id"].map(type).eq(str).all()
    assert (expected["model_id"] == "007").sum() == 12

    # The documented queries (docs/store.md): hive partitions as text, columns united by name.
    con = duckdb.connect()
    duck = con.execute(f"""
        SELECT model_id, count(*) AS n, count(precision) AS with_precision
        FROM read_parquet('{results}/**/*.parquet', hive_partitioning = true, union_by_name = true,
                          hive_types = {{'kind': VARCHAR, 'model_id': VARCHAR}})
        GROUP BY model_id ORDER BY model_id""").fetchall()
    assert duck == [("007", 12, 10), ("m1", 10, 10)]
    polars = (pl.scan_parquet(f"{results}/**/*.parquet", schema=pl.read_parquet_schema(results / SCHEMA_FILE),
                              hive_partitioning=True, hive_schema={"kind": pl.String, "model_id": pl.String},
                              missing_columns="insert")
              .group_by("model_id").agg(pl.len().alias("n"), pl.col("precision").count().alias("with_precision"))
              .sort("model_id").collect())
    assert polars.rows() == [("007", 12, 10), ("m1", 10, 10)]
    folders = pa.schema([("kind", pa.string()), ("model_id", pa.string())])
    schema = pa.unify_schemas([pq.read_schema(results / SCHEMA_FILE), folders])
    dataset = pads.dataset(results, format="parquet", schema=schema, partitioning=pads.partitioning(folders,
                                                                                                 flavor="hive"))
    table = dataset.to_table(columns=["model_id", "precision", "eps"])
    assert table.num_rows == 22 and table.schema.field("model_id").type == pa.string()
    assert table.column("model_id").to_pylist().count("007") == 12 and table.column("precision").null_count == 2
    assert math.isnan(expected.set_index("job_id").loc["old-a", "eps"])
    assert expected.set_index("job_id").loc["old-a", "precision"] == "fp32"  # load_results: what they were


def test_a_commit_names_its_created_at(tmp_path):
    """Sanity of the helper the tests above grow stores with: every row has a time, so the latest is defined."""
    grow_store(tmp_path, parts=2)
    assert read_table(tmp_path, "results")["created_at"].notna().all()
    assert now_utc().tzinfo is not None
