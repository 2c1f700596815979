"""The Parquet store: `schema` (tables, columns, partitions), `read` (tables as DataFrames), `commit`
(atomic part files, manifests). Pure pyarrow/pandas, no Ray. The query helpers are re-exported here:

    from robrep.store import load_images, load_results, read_table
"""

from robrep.store.read import committed_job_ids, find_model, load_images, load_results, read_manifests, read_table

__all__ = ["committed_job_ids", "find_model", "load_images", "load_results", "read_manifests", "read_table"]
