"""Exports: a trained model as safetensors or ONNX with its metadata beside it, and an ONNX file
checked, then run in a child process under a deadline."""
