"""The training engine. Knows no concrete model, data set or feature (import-linter enforces it)."""
