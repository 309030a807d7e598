"""Transfer learning: pretrained weights that ship in packages, freezing, per-group learning rates
and LoRA (docs/transfer.md)."""
