"""The report (`page`: the HTML page and its figures, from store tables alone; `figures`: PIL drawing). The entry
points' helpers are re-exported here:

    from robrep.report import build_report, current_results, summary_table
"""

from robrep.report.page import blocks, build_report, current_results, judged_table, latest_setting, summary_table

__all__ = ["blocks", "build_report", "current_results", "judged_table", "latest_setting", "summary_table"]
