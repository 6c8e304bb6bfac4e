"""Training jobs: read and validate data, fit and evaluate, publish to the registry."""
