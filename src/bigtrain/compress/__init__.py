"""Compression: distillation (a Task wrapper), pruning and quantization as plain functions on any
``nn.Module``, plus thin adapters (docs/compression.md)."""
