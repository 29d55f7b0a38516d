"""`pixcade serve`: a local web page and JSON/HTTP API (jobs, progress, stage images) over one cascade."""
