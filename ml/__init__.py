"""The user's ML code: the only folder a fork replaces (schema, stages, model)."""
