"""Moved: the report workflow lives in :mod:`headwise.report` (``headwise.viz`` only draws)."""

raise ImportError(
    "headwise.viz.report moved to headwise.report (write_report, ReportSettings, report_steps, attention_maps); "
    "the page helpers attention_page and head_map_pngs are in headwise.viz."
)
