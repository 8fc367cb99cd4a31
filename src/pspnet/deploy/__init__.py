"""Deployment: exporting a checkpoint to ONNX (fp32 or int8) or a torch.export program, verifying that
the file reproduces the model at several input sizes before it is written (export.py, verify.py, quantize.py)."""
