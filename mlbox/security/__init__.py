"""L2 security: roles and permissions, users, API tokens, and the actor behind each call."""
