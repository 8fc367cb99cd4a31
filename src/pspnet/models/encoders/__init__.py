"""Encoders: feature extractors returning a list of NCHW maps, by name (registry.py), built with timm
(ResNet, EfficientNet, MobileNetV2, Swin, any timm model) or from scratch (lite); their pretrained weights."""

from .pretrained import LoadReport, load_encoder_weights
from .registry import ENCODERS, EncoderSpec, build_encoder, encoder_table, resolve_encoder

__all__ = [
    "ENCODERS",
    "EncoderSpec",
    "LoadReport",
    "build_encoder",
    "encoder_table",
    "load_encoder_weights",
    "resolve_encoder",
]
