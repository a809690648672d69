"""Neural networks for diffusion: the DDPM UNet (Flax Linen), its building blocks, SD's KL
autoencoder and the patch discriminator that trains it, the registry
that configs pick networks from by name, and the one adapter from a network to a ``model_fn``
(:func:`make_model_fn`)."""

from diffjax.models.attention import dot_product_attention
from diffjax.models.autoencoder import (
    AUTOENCODER_PRESETS,
    AutoencoderKL,
    AutoencoderVQ,
    decode_checked,
)
from diffjax.models.conditioning import (
    ModuleApply,
    cond_keys,
    drop_cond,
    make_model_fn,
    null_cond,
    select_cond,
)
from diffjax.models.discriminator import PatchDiscriminator
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
from diffjax.models.transformer import SpatialTransformer
from diffjax.models.unet import (
    UNet,
    check_attn_resolutions,
    check_image_size,
    count_params,
    feature_map_sizes,
)

__all__ = [
    "AUTOENCODER_PRESETS",
    "MODELS",
    "MODEL_NAMES",
    "AttentionBlock",
    "AutoencoderKL",
    "AutoencoderVQ",
    "Downsample",
    "GroupNorm",
    "ModelEntry",
    "ModuleApply",
    "PatchDiscriminator",
    "ResBlock",
    "SpatialTransformer",
    "TimeEmbedding",
    "UNet",
    "Upsample",
    "build_model",
    "check_attn_resolutions",
    "check_image_size",
    "check_model_config",
    "cond_keys",
    "decode_checked",
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
