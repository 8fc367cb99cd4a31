"""Backends that run a model behind the same call contract as PSPNet (normalised NCHW in, logits out):
onnxruntime for exported .onnx files (onnx_model.py), bf16 PyTorch (bf16.py), and the exported files' metadata."""
