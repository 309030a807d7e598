"""bigtrain: from a YAML recipe to a trained, evaluated model."""

__version__ = "0.1.0"
