"""Export a trained model: safetensors with the config that rebuilds it, or ONNX (docs/export.md)."""
