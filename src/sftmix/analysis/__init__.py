"""Analysis: tables, figures, FLOPs and the HTML report, all built from the results store."""
