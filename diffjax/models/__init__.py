"""Neural networks for diffusion: the DDPM UNet (Flax Linen), its building blocks, the registry
that configs pick networks from by name, and the one adapter from a network to a ``model_fn``
(:func:`make_model_fn`)."""

from diffjax.models.attention import dot_product_attention
from diffjax.models.conditioning import (
    ModuleApply,
    cond_keys,
    drop_cond,
    make_model_fn,
    null_cond,
    select_cond,
)
from diffjax.models.group_norm import GroupNorm, group_norm
from diffjax.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimeEmbedding,
    Upsample,
    sinusoidal_embedding,
)
from diffjax.models.registry import (
    MODEL_NAMES,
    MODELS,
    ModelEntry,
    build_model,
    check_model_config,
    default_model_config,
    model_entry,
    register_model,
)
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
    "ModelEntry",
    "ModuleApply",
    "ResBlock",
    "TimeEmbedding",
    "UNet",
    "Upsample",
    "build_model",
    "check_attn_resolutions",
    "check_image_size",
    "check_model_config",
    "cond_keys",
    "count_params",
    "default_model_config",
    "dot_product_attention",
    "drop_cond",
    "feature_map_sizes",
    "group_norm",
    "make_model_fn",
    "model_entry",
    "null_cond",
    "register_model",
    "select_cond",
    "sinusoidal_embedding",
]
