"""Model sources (the zoo, `models:/`), model artifacts (safetensors + spec) and ONNX."""
