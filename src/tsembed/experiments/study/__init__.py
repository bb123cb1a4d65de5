"""`tsembed study`: a checked-in YAML study (variants, seeds, suites, splits, the selection rule) run, resumed
and summarised by one command (docs/studies.md)."""
