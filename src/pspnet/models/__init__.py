"""The networks: encoders (encoders/), the pyramid pooling module, decoder heads and the PSPNet
assembly, which carries its model card; no dataset, checkpoint or command-line code."""

from .heads import ClassPresenceHead, FCNHead, PSPHead
from .ppm import PyramidPoolingModule
from .pspnet import PSPNet, create_model

__all__ = ["PSPNet", "create_model", "PSPHead", "FCNHead", "ClassPresenceHead", "PyramidPoolingModule"]
