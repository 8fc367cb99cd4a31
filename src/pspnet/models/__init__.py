"""Network definitions: encoders, the pyramid pooling module, heads and the PSPNet assembly."""

from .heads import ClassPresenceHead, FCNHead, PSPHead
from .pspnet import PSPNet
from .ppm import PyramidPoolingModule

__all__ = ["PSPNet", "PSPHead", "FCNHead", "ClassPresenceHead", "PyramidPoolingModule"]
