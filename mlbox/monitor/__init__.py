"""L3 monitoring: reference profiles, drift and quality checks over the prediction log, A/B verdicts, policies."""
