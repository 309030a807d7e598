"""Command line: ``bigtrain train|eval|predict|cv|recipes|optim|data|generate``."""
