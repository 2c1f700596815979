"""kill -9 of `python -m jobs.store compact` at each step of a compaction, on one store in a row: before a new
file's rename, after it, before the replaced parts are deleted, and between two deletions. After every kill the store
reads the same rows; a last run finishes the work: one row per row key on disk, a file per folder, no temp file.
(Points are reached through robrep.core.faults.fault_point, inert unless ROBREP_FAULT is set.)"""

import signal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from helpers import grow_store, run_module

from robrep.store import read_table

KILLS = [  # (point, the n-th time): each run starts where the killed one left the store
    "compact.before_rename:2",  # the first folder compacted, the second's new file not yet in place
    "compact.after_rename:1",  # the second folder's new file in place, none of its parts deleted
    "compact.before_delete:1",  # the second folder again: its new file rewritten under the same name
    "compact.deleted:3",  # three of the second folder's parts deleted, the rest still there
]


def rows_of(store):
    return read_table(store, "results").sort_values("job_id").reset_index(drop=True)


def test_a_compaction_killed_at_any_step_leaves_a_store_that_reads_the_same(tmp_path):
    store = tmp_path / "store"
    grow_store(store, parts=30, rows=4)
    again = tmp_path / "retry"  # a row key twice: the later row is the one kept, before and after
    grow_store(again, parts=1, rows=4)
    for part in (again / "results").rglob("part-*.parquet"):
        table = pq.read_table(part)
        later = table.set_column(table.schema.get_field_index("rep_dist"), "rep_dist",
                                 pa.array([-1.0] * len(table), pa.float32()))
        stamp = later.schema.field("created_at").type
        later = later.set_column(later.schema.get_field_index("created_at"), "created_at",
                                 pa.array([pd.Timestamp.now(tz="UTC")] * len(table), stamp))
        pq.write_table(later, str(part).replace(str(again), str(store)).replace(part.name, "part-0-retried.parquet"))
    before = rows_of(store)
    assert len(before) == 120 and (before["rep_dist"] == -1.0).sum() == 4
    folders = sorted((store / "results").glob("kind=*/model_id=*"))
    assert [len(list(f.glob("part-*"))) for f in folders] == [16, 15]

    for point in KILLS:
        killed = run_module("jobs.store", "compact", "--store", str(store), env={"ROBREP_FAULT": point})
        assert killed.returncode == -signal.SIGKILL, f"{point}: {killed.stdout[-2000:]}{killed.stderr[-2000:]}"
        pd.testing.assert_frame_equal(rows_of(store), before, obj=f"rows after a kill at {point}")
        print(point, [len(list(f.glob("part-*"))) for f in folders], len(list(store.rglob(".*.tmp"))))

    done = run_module("jobs.store", "compact", "--store", str(store))  # takes over the dead holder's lease
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    pd.testing.assert_frame_equal(rows_of(store), before)
    on_disk = pd.read_parquet(store / "results")
    assert len(on_disk) == 120 and on_disk["job_id"].is_unique
    assert [len(list(f.glob("part-*"))) for f in folders] == [1, 1]
    assert not list(store.rglob("*.tmp")) and not (store / "_lease.json").exists()
    assert not (store / "_quarantine").exists()
    check = run_module("jobs.store", "check", "--store", str(store))
    assert check.returncode == 0 and "results: 120 rows in 2 parts, 0 damaged, 0 temp files" in check.stdout
