"""L3 jobs: the queue in meta.db, GPU/CPU placement (pure), isolated job processes, and the worker."""
