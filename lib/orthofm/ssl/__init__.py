"""Self-supervised pretraining (MAE, DINO with optional iBOT and KoLeo) on unlabeled MSK images."""

from .config import DINOConfig, PretrainConfig, load_config, save_config
from .meta_arch import SSLMetaArch
from .stopping import PretrainingStopped
from .train import pretrain

__all__ = ["DINOConfig", "PretrainConfig", "PretrainingStopped", "SSLMetaArch", "load_config", "pretrain", "save_config"]
