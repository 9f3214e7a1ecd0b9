"""L2 registry: model versions, artifacts, aliases (compare-and-set), archive, diff, export."""
