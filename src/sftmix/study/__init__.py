"""Studies: a base run plus a grid over run fields, run in order with resume, results in SQLite."""
