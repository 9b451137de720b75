"""Self-supervised objectives, one per module (MAE, DINO, iBOT, KoLeo), and the teachers' centring."""

from .centering import sinkhorn_knopp
from .dino_loss import DINOLoss
from .ibot_loss import IBOTPatchLoss
from .koleo_loss import KoLeoLoss
from .mae_loss import mae_loss

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss", "mae_loss", "sinkhorn_knopp"]
