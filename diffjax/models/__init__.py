"""Neural networks for diffusion: the DDPM UNet (Flax Linen), its building blocks, and the
registry that configs pick networks from by name."""

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
from diffjax.models.registry import MODEL_NAMES, MODELS, build_model, check_model_config
from diffjax.models.unet import (
    UNet,
    check_attn_resolutions,
    check_image_size,
    count_params,
    feature_map_sizes,
)

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "AttentionBlock",
    "Downsample",
    "GroupNorm",
    "ResBlock",
    "TimeEmbedding",
    "UNet",
    "Upsample",
    "build_model",
    "check_attn_resolutions",
    "check_image_size",
    "check_model_config",
    "count_params",
    "dot_product_attention",
    "feature_map_sizes",
    "group_norm",
    "sinusoidal_embedding",
]
