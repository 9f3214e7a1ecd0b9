"""L3 training: specs, data loading and splits, metrics, gates, and the train-and-register workflow."""
