"""The `pspnet` command: one module per command group (train, evaluate/predict, data, convert,
models/config), assembled in main.py. Heavy libraries are imported only when a command runs."""

from .main import main

__all__ = ["main"]
