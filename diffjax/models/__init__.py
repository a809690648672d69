"""Neural networks for diffusion: the DDPM UNet (Flax Linen, also Stable Diffusion's), its
building blocks, SD's KL autoencoder, ControlNet and the patch discriminator that trains it, CLIP's text
encoder and tokenizer, the registry that configs pick networks from by name, the one adapter
from a network to a ``model_fn`` (:func:`make_model_fn`), and the published weights in and out
(:func:`from_pretrained`, :func:`from_single_file`, :func:`save_pretrained`)."""

from diffjax.models.attention import dot_product_attention
from diffjax.models.autoencoder import (
    AUTOENCODER_PRESETS,
    AutoencoderKL,
    AutoencoderVQ,
    decode_checked,
)
from diffjax.models.classifier import NoisyClassifier
from diffjax.models.clip import CLIPTextModel
from diffjax.models.clip_tokenizer import CLIPTokenizer
from diffjax.models.conditioning import (
    ModuleApply,
    cond_keys,
    drop_cond,
    learned_variance,
    make_model_fn,
    null_cond,
    prediction_channels,
    select_cond,
)
from diffjax.models.controlnet import (
    ControlledModel,
    ControlNet,
    DiTControlNet,
    controlnet_fields,
    controlnet_from_base,
)
from diffjax.models.discriminator import PatchDiscriminator
from diffjax.models.dit import DIT_PRESETS, DiT
from diffjax.models.dit_weights import dit_from_checkpoint
from diffjax.models.group_norm import GroupNorm, group_norm
from diffjax.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimeEmbedding,
    Upsample,
    sinusoidal_embedding,
)
from diffjax.models.mmdit import MMDiT
from diffjax.models.pretrained import from_pretrained, save_pretrained
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
from diffjax.models.single_file import from_single_file
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
    "CLIPTextModel",
    "DIT_PRESETS",
    "DiT",
    "DiTControlNet",
    "MMDiT",
    "NoisyClassifier",
    "CLIPTokenizer",
    "ControlNet",
    "ControlledModel",
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
    "controlnet_fields",
    "controlnet_from_base",
    "decode_checked",
    "count_params",
    "default_model_config",
    "dit_from_checkpoint",
    "dot_product_attention",
    "drop_cond",
    "feature_map_sizes",
    "from_pretrained",
    "from_single_file",
    "group_norm",
    "learned_variance",
    "make_model_fn",
    "model_entry",
    "null_cond",
    "prediction_channels",
    "register_model",
    "save_pretrained",
    "select_cond",
    "sinusoidal_embedding",
]
