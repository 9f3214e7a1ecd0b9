"""L3 serving: deployments, traffic routing, model runtime, input validation, prediction log, metrics."""
