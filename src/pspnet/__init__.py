"""pspnet: Pyramid Scene Parsing Network for semantic segmentation (train, evaluate, predict)."""

from .checkpoint import create_model, load_model
from .classes import ClassInfo
from .config import Config, load_config
from .models import PSPNet

__version__ = "0.1.0"
__all__ = ["PSPNet", "create_model", "load_model", "Config", "load_config", "ClassInfo", "__version__"]
