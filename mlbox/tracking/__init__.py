"""L2 tracking: experiments, runs, params, metrics (buffered), artifacts, environment capture."""
