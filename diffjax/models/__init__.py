"""Neural networks for diffusion: the DDPM UNet (Flax Linen) and its building blocks."""

from diffjax.models.attention import dot_product_attention
from diffjax.models.group_norm import GroupNorm, group_norm
from diffjax.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimeEmbedding,
    Upsample,
    sinusoidal_embedding,
)
from diffjax.models.unet import (
    UNet,
    check_attn_resolutions,
    check_image_size,
    count_params,
    feature_map_sizes,
)

__all__ = [
    "AttentionBlock",
    "Downsample",
    "GroupNorm",
    "ResBlock",
    "TimeEmbedding",
    "UNet",
    "Upsample",
    "check_attn_resolutions",
    "check_image_size",
    "count_params",
    "dot_product_attention",
    "feature_map_sizes",
    "group_norm",
    "sinusoidal_embedding",
]
