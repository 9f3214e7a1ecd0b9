"""L5 HTTP API: the Starlette app (inference, online features, management, health) and the BentoML service."""
