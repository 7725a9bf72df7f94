"""Small nn.Modules shared by several mixers: short convolutions, gated norms, feature maps."""

from longseq.modules.feature_maps import FavorFeatures
from longseq.modules.gated_norm import GatedRMSNorm
from longseq.modules.short_conv import ShortConv, ShortConvState

__all__ = ["FavorFeatures", "GatedRMSNorm", "ShortConv", "ShortConvState"]
