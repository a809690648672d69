"""Networks by name, for configs: ``config.model.name`` picks one, its own keys configure it.

Every registered network is a Flax Linen module called as ``module(x, t, cond, train=...)``
that declares the conditioning it reads (``cond_keys``) and its null condition (``null_cond``;
:mod:`diffjax.models.conditioning`), so the training program, sampling, guidance and resuming
work with any of them. (A network another objective trains, the autoencoder
``'autoencoder_kl'``, is registered here too; its objective initialises and calls it.) An entry holds the network's config section with its defaults (from
which the config schema is derived: a key's type is its default's), builds the module from a
validated ``config.model`` section, checks that it takes the data's shape, and names the keys
that fix the parameters' shapes and meaning (a resumed run must keep those). A network's
options are validated by the network itself (its constructor and ``check_input_shape``), not by
a second copy of the rules.

The registry is open: :func:`register_model` adds a user's own Flax network, which a config
then names (``config.model = diffjax.models.default_model_config('mine')``, with the module
that registers it in ``config.imports``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from diffjax.models.autoencoder import AutoencoderKL, AutoencoderVQ, check_autoencoder_input
from diffjax.models.classifier import NoisyClassifier
from diffjax.models.controlnet import (
    ControlledModel,
    ControlNet,
    DiTControlNet,
    controlnet_fields,
)
from diffjax.models.dit import DiT
from diffjax.models.mmdit import MMDiT
from diffjax.models.unet import (
    UNet,
    check_attn_resolutions,
    check_image_size,
)
from diffjax.names import RegistryNames

__all__ = [
    "DTYPES",
    "MODELS",
    "MODEL_NAMES",
    "ModelEntry",
    "build_model",
    "check_model_config",
    "controlnet_base_config",
    "controlnet_model_config",
    "default_model_config",
    "model_entry",
    "register_model",
]

DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _common_keys(name: str) -> ml_collections.ConfigDict:
    """The keys every ``config.model`` has, whatever the network."""
    section = ml_collections.ConfigDict()
    # The network, by name in diffjax.models.MODELS; the other keys are that network's.
    section.name = name
    # None: unconditional. K: class-conditional on K classes (label K is the null label).
    section.num_classes = config_dict.placeholder(int)
    # Compute and parameter dtypes: 'float32' or 'bfloat16' (TPU/GPU).
    section.dtype = "float32"
    section.param_dtype = "float32"
    return section


class ModelEntry(NamedTuple):
    """A registered network.

    Attributes:
      defaults: ``defaults() -> dict`` of the network's own config keys and their default
        values (an ``ml_collections.config_dict.placeholder(type)`` marks a key that may be
        None); their types are the schema of the section.
      build: ``build(model_config) -> module``; ``model_config`` is the validated section.
      check_input_shape: ``check(module, shape)`` raising ``ValueError`` for an input (one
        example, ``(H, W, C)``, or ``(H, W)`` before the channel count is known) the network
        cannot take.
      state_keys: the keys of ``defaults`` that fix the parameters (changing them breaks a
        resume).
    """

    defaults: Callable[[], Mapping[str, Any]]
    build: Callable[[Mapping[str, Any]], nn.Module]
    check_input_shape: Callable[[nn.Module, tuple[int, ...]], None]
    state_keys: tuple[str, ...]


def _unet_defaults() -> dict[str, Any]:
    # DDPM's CIFAR-10 values: 35.7M parameters.
    return dict(
        base_channels=128,
        channel_mults=(1, 2, 2, 2),
        num_res_blocks=2,
        # Feature-map sizes (pixels) that get self-attention; each must occur in the UNet.
        attn_resolutions=(16,),
        # Or the levels (0 = full resolution) that get attention at any image size.
        attn_levels=(),
        dropout=0.1,
        num_groups=32,
        # Recompute activations in the backward pass: less memory, ~30% more compute. remat:
        # the ResNet blocks; remat_attention: the attention blocks / spatial transformers;
        # remat_policy: what they keep (diffjax.models.unet.REMAT_POLICIES).
        remat=False,
        remat_attention=False,
        remat_policy="nothing_saveable",
        # Also embed a guidance scale, cond['guidance'] (a guidance-distilled student).
        guidance_embedding=False,
        # Cross-attention on cond['context'] [B, L, context_dim] (SD's spatial transformers at
        # the attention blocks); None: self-attention only.
        context_dim=config_dict.placeholder(int),
        transformer_heads=8,
        transformer_depth=1,
        # Heads of width attention_head_dim in every attention block (SD 2: 64) instead.
        attention_head_dim=config_dict.placeholder(int),
        # Linear (SD 2) rather than 1x1-convolution (SD 1) projections in the transformers.
        linear_projection=False,
        # The class label becomes a learned one-token context instead of a time-embedding term.
        class_context=False,
        # Conventions of published UNets (from_pretrained sets them): the GroupNorm epsilon,
        # the timestep embedding's (cosines first, frequency shift) and the downsampling's
        # padding (0: DDPM's (0, 1), 1: SD's (1, 1)).
        norm_epsilon=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1.0,
        downsample_padding=0,
    )


def _build_unet(config: Mapping[str, Any]) -> UNet:
    return UNet(
        base_channels=config["base_channels"],
        channel_mults=tuple(config["channel_mults"]),
        num_res_blocks=config["num_res_blocks"],
        attn_resolutions=tuple(config["attn_resolutions"]),
        dropout=config["dropout"],
        num_classes=config["num_classes"],
        num_groups=config["num_groups"],
        dtype=DTYPES[config["dtype"]],
        param_dtype=DTYPES[config["param_dtype"]],
        remat=config["remat"],
        remat_attention=config["remat_attention"],
        remat_policy=config["remat_policy"],
        guidance_embedding=config["guidance_embedding"],
        context_dim=config["context_dim"],
        transformer_heads=config["transformer_heads"],
        transformer_depth=config["transformer_depth"],
        linear_projection=config["linear_projection"],
        class_context=config["class_context"],
        attn_levels=tuple(config["attn_levels"]),
        attention_head_dim=config["attention_head_dim"],
        norm_epsilon=config["norm_epsilon"],
        flip_sin_to_cos=config["flip_sin_to_cos"],
        freq_shift=config["freq_shift"],
        downsample_padding=config["downsample_padding"],
    )


def _check_unet_input(model: UNet, image_shape: tuple[int, ...]) -> None:
    if len(image_shape) not in (2, 3):
        raise ValueError(f"the UNet takes images (H, W, C), got inputs of shape {image_shape}.")
    for side in image_shape[:2]:
        check_image_size(side, model.channel_mults)
    check_attn_resolutions(image_shape[0], model.channel_mults, model.attn_resolutions)


_CONTROLNET_KEYS = ("conditioning_embedding_channels", "conditioning_scale", "control_depth")
_CONTROLNET_BASES = {"controlnet": "unet", "dit_controlnet": "dit"}


def _controlnet_defaults() -> dict[str, Any]:
    # A frozen base UNet (its keys, as the base run has them) and a ControlNet of it.
    return dict(
        _unet_defaults(),
        # The condition encoder's widths; up to len - 1 stride-2 steps (a control image
        # 2**k times the input's size).
        conditioning_embedding_channels=(16, 32, 96, 256),
        # The weight of the ControlNet's residuals (0: the base model).
        conditioning_scale=1.0,
    )


def controlnet_base_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The base network's section of a ``'controlnet'`` (``'unet'``) or ``'dit_controlnet'``
    (``'dit'``) one."""
    base = {key: value for key, value in dict(config).items() if key not in _CONTROLNET_KEYS}
    return dict(base, name=_CONTROLNET_BASES[config["name"]])


def _build_controlnet(config: Mapping[str, Any]) -> ControlledModel:
    base = _build_unet(config)
    controlnet = ControlNet(
        **controlnet_fields(base),
        conditioning_embedding_channels=tuple(config["conditioning_embedding_channels"]),
    )
    return ControlledModel(base, controlnet, float(config["conditioning_scale"]))


def _check_controlnet_input(model: ControlledModel, image_shape: tuple[int, ...]) -> None:
    _check_unet_input(model.base, image_shape)


def _dit_controlnet_defaults() -> dict[str, Any]:
    # A frozen base DiT (its keys, as the base run has them) and a ControlNet of its first
    # control_depth blocks (SD3's design).
    return dict(_dit_defaults(), control_depth=1, conditioning_scale=1.0)


def _build_dit_controlnet(config: Mapping[str, Any]) -> ControlledModel:
    base = _build_dit(config)
    controlnet = DiTControlNet(**controlnet_fields(base), control_depth=config["control_depth"])
    return ControlledModel(base, controlnet, float(config["conditioning_scale"]))


def _check_dit_controlnet_input(model: ControlledModel, image_shape: tuple[int, ...]) -> None:
    _check_dit_input(model.base, image_shape)


def _dit_defaults() -> dict[str, Any]:
    # DiT-S (Peebles & Xie 2023, Table 1); diffjax.models.DIT_PRESETS has S, B, L and XL.
    return dict(
        patch_size=2,
        hidden_size=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        # None: the input's channels.
        out_channels=config_dict.placeholder(int),
        # Also output Improved DDPM's variance values (2 C channels, as the published models):
        # trained with config.diffusion.vlb_weight > 0, sampled by DDPM's 'learned_range'.
        learn_sigma=False,
        # The training image side the position embeddings are scaled to; None: the input's.
        sample_size=config_dict.placeholder(int),
        mlp_norm_epsilon=1e-6,
        # The timestep sinusoid's frequency shift: 1 diffusers' DiT, 0 the original's.
        time_freq_shift=1.0,
        remat=False,
        # One nn.scan over the blocks (parameters stacked on a depth axis): compile time flat
        # in depth.
        scan_blocks=False,
    )


def _build_dit(config: Mapping[str, Any]) -> DiT:
    return DiT(
        patch_size=config["patch_size"],
        hidden_size=config["hidden_size"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        mlp_ratio=config["mlp_ratio"],
        num_classes=config["num_classes"],
        out_channels=config["out_channels"],
        learn_sigma=config["learn_sigma"],
        sample_size=config["sample_size"],
        mlp_norm_epsilon=config["mlp_norm_epsilon"],
        time_freq_shift=config["time_freq_shift"],
        remat=config["remat"],
        scan_blocks=config["scan_blocks"],
        dtype=DTYPES[config["dtype"]],
        param_dtype=DTYPES[config["param_dtype"]],
    )


def _check_dit_input(model: DiT, image_shape: tuple[int, ...]) -> None:
    if len(image_shape) not in (2, 3) or any(side % model.patch_size for side in image_shape[:2]):
        raise ValueError(
            f"the DiT takes images (H, W, C) with H and W multiples of patch_size="
            f"{model.patch_size}, got {image_shape}."
        )


def _mmdit_defaults() -> dict[str, Any]:
    # A DiT-S-sized MMDiT; SD3 medium is hidden_size=1536, depth=24, num_heads=24 (MMDiT's
    # defaults; its published weights load with diffjax.models.from_pretrained).
    return dict(
        patch_size=2,
        hidden_size=384,
        depth=12,
        num_heads=6,
        # None: the input's channels.
        out_channels=config_dict.placeholder(int),
        # The widths of cond['context'] [B, L, D] and cond['pooled'] [B, P] (the text encoder's).
        joint_attention_dim=768,
        pooled_projection_dim=768,
        # The training image side (positions span sample_size // patch_size patches as the
        # unit range) and the position grid's side in patches, which must cover every input.
        sample_size=32,
        pos_embed_max_size=32,
        # None or 'rms_norm' (SD3.5's per-head RMSNorm of queries and keys).
        qk_norm=config_dict.placeholder(str),
        # Blocks with SD3.5's second self-attention on the image tokens.
        dual_attention_layers=(),
        remat=False,
    )


def _build_mmdit(config: Mapping[str, Any]) -> MMDiT:
    if config["num_classes"] is not None:
        raise ValueError(
            f"the MMDiT is conditioned on text (cond['context'], cond['pooled']), not on "
            f"class labels; got num_classes={config['num_classes']}."
        )
    return MMDiT(
        patch_size=config["patch_size"],
        hidden_size=config["hidden_size"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        in_channels=None,
        out_channels=config["out_channels"],
        joint_attention_dim=config["joint_attention_dim"],
        pooled_projection_dim=config["pooled_projection_dim"],
        sample_size=config["sample_size"],
        pos_embed_max_size=config["pos_embed_max_size"],
        qk_norm=config["qk_norm"],
        dual_attention_layers=tuple(config["dual_attention_layers"]),
        remat=config["remat"],
        dtype=DTYPES[config["dtype"]],
        param_dtype=DTYPES[config["param_dtype"]],
    )


def _check_mmdit_input(model: MMDiT, image_shape: tuple[int, ...]) -> None:
    p, size = model.patch_size, model.pos_embed_max_size
    if len(image_shape) not in (2, 3) or any(s % p or s // p > size for s in image_shape[:2]):
        raise ValueError(
            f"the MMDiT takes images (H, W, C) with H and W multiples of patch_size={p} and at "
            f"most pos_embed_max_size * patch_size = {size * p}, got {image_shape}."
        )


def _classifier_defaults() -> dict[str, Any]:
    # config.model.num_classes is the number of classes the classifier predicts (required).
    return dict(
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
        num_groups=8,
    )


def _build_classifier(config: Mapping[str, Any]) -> NoisyClassifier:
    return NoisyClassifier(
        num_classes=config["num_classes"],
        base_channels=config["base_channels"],
        channel_mults=tuple(config["channel_mults"]),
        num_res_blocks=config["num_res_blocks"],
        attn_resolutions=tuple(config["attn_resolutions"]),
        dropout=config["dropout"],
        num_groups=config["num_groups"],
        dtype=DTYPES[config["dtype"]],
        param_dtype=DTYPES[config["param_dtype"]],
    )


def _autoencoder_defaults() -> dict[str, Any]:
    # SD's kl-f8 (83.7M parameters); diffjax.models.AUTOENCODER_PRESETS has the others.
    return dict(
        base_channels=128,
        channel_mults=(1, 2, 4, 4),
        num_res_blocks=2,
        latent_channels=4,
        # Channels of the images (Fashion-MNIST: 1).
        image_channels=3,
        num_groups=32,
        # The 1x1 quant_conv / post_quant_conv (SD 1/2, SDXL: True; SD3: False).
        quant_conv=True,
        # Run the autoencoder in float32 whatever dtype says.
        force_upcast=False,
    )


def _build_autoencoder(config: Mapping[str, Any]) -> AutoencoderKL:
    return AutoencoderKL(
        base_channels=config["base_channels"],
        channel_mults=tuple(config["channel_mults"]),
        num_res_blocks=config["num_res_blocks"],
        latent_channels=config["latent_channels"],
        image_channels=config["image_channels"],
        num_groups=config["num_groups"],
        quant_conv=config["quant_conv"],
        force_upcast=config["force_upcast"],
        dtype=DTYPES[config["dtype"]],
        param_dtype=DTYPES[config["param_dtype"]],
    )


_AUTOENCODER_STATE_KEYS = (
    "base_channels", "channel_mults", "num_res_blocks", "latent_channels", "image_channels",
    "num_groups", "quant_conv",
)  # fmt: skip


def _vq_defaults() -> dict[str, Any]:
    # LDM's VQ-f4 with the KL network's keys; AUTOENCODER_PRESETS['ldm_vq_f4'].
    return dict(
        _autoencoder_defaults(), channel_mults=(1, 2, 4), latent_channels=3, codebook_size=8192
    )


def _build_vq(config: Mapping[str, Any]) -> AutoencoderVQ:
    kl = _build_autoencoder(config)
    fields = {
        field: getattr(kl, field)
        for field in kl.__dataclass_fields__
        if field not in ("parent", "name")
    }
    return AutoencoderVQ(**fields, codebook_size=config["codebook_size"])


def _check_autoencoder(model: AutoencoderKL, image_shape: tuple[int, ...]) -> None:
    for channels in (model.base_channels * mult for mult in model.channel_mults):
        if channels % model.num_groups:
            raise ValueError(
                f"num_groups={model.num_groups} must divide every level's channels "
                f"(base_channels * channel_mults: {channels})."
            )
    check_autoencoder_input(image_shape, model.channel_mults, model.image_channels)


_UNET_STATE_KEYS = (
    "base_channels", "channel_mults", "num_res_blocks", "attn_resolutions", "num_groups",
    "guidance_embedding", "context_dim", "transformer_heads", "transformer_depth",
    "linear_projection", "class_context", "attn_levels", "attention_head_dim", "norm_epsilon",
    "flip_sin_to_cos", "freq_shift", "downsample_padding",
)  # fmt: skip

_MMDIT_STATE_KEYS = (
    "patch_size", "hidden_size", "depth", "num_heads", "out_channels", "joint_attention_dim",
    "pooled_projection_dim", "qk_norm", "dual_attention_layers",
)  # fmt: skip

_DIT_STATE_KEYS = (
    "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio", "out_channels", "learn_sigma",
    "time_freq_shift", "scan_blocks",
)  # fmt: skip

MODELS: dict[str, ModelEntry] = {
    "unet": ModelEntry(
        defaults=_unet_defaults,
        build=_build_unet,
        check_input_shape=_check_unet_input,
        state_keys=_UNET_STATE_KEYS,
    ),
    "controlnet": ModelEntry(
        defaults=_controlnet_defaults,
        build=_build_controlnet,
        check_input_shape=_check_controlnet_input,
        state_keys=(*_UNET_STATE_KEYS, "conditioning_embedding_channels"),
    ),
    "dit": ModelEntry(
        defaults=_dit_defaults,
        build=_build_dit,
        check_input_shape=_check_dit_input,
        state_keys=_DIT_STATE_KEYS,
    ),
    "mmdit": ModelEntry(
        defaults=_mmdit_defaults,
        build=_build_mmdit,
        check_input_shape=_check_mmdit_input,
        state_keys=_MMDIT_STATE_KEYS,
    ),
    "dit_controlnet": ModelEntry(
        defaults=_dit_controlnet_defaults,
        build=_build_dit_controlnet,
        check_input_shape=_check_dit_controlnet_input,
        state_keys=(*_DIT_STATE_KEYS, "control_depth"),
    ),
    "unet_classifier": ModelEntry(
        defaults=_classifier_defaults,
        build=_build_classifier,
        # The UNet's encoder: the same image-size and attention-resolution rules.
        check_input_shape=_check_unet_input,
        state_keys=(
            "base_channels",
            "channel_mults",
            "num_res_blocks",
            "attn_resolutions",
            "num_groups",
        ),  # fmt: skip
    ),
    "autoencoder_kl": ModelEntry(
        defaults=_autoencoder_defaults,
        build=_build_autoencoder,
        check_input_shape=_check_autoencoder,
        state_keys=_AUTOENCODER_STATE_KEYS,
    ),
    "autoencoder_vq": ModelEntry(
        defaults=_vq_defaults,
        build=_build_vq,
        check_input_shape=_check_autoencoder,
        state_keys=(*_AUTOENCODER_STATE_KEYS, "codebook_size"),
    ),
}
"""The registered networks by name (the built-in ones and those of :func:`register_model`)."""

MODEL_NAMES: Sequence[str] = RegistryNames(MODELS)
"""The names of the registered networks (a live view)."""


def register_model(name: str, entry: ModelEntry) -> None:
    """Adds a network that configs can name (``config.model.name``).

    Args:
      name: a new name.
      entry: its :class:`ModelEntry`. The module it builds is called as
        ``module(x, t, cond, train=...)``, returns the prediction of x's shape, and declares
        ``cond_keys`` and ``null_cond`` if it reads conditioning.

    Raises:
      ValueError: the name is taken, or the entry's defaults reuse a common key.
    """
    if not isinstance(name, str) or not name or name in MODELS:
        raise ValueError(
            f"register_model needs a new, non-empty name; {name!r} is taken or empty "
            f"(registered: {tuple(MODELS)})."
        )
    if not isinstance(entry, ModelEntry):
        raise TypeError(f"entry must be a diffjax.models.ModelEntry, got {type(entry).__name__}.")
    clash = sorted(set(entry.defaults()) & set(_common_keys(name)))
    if clash:
        raise ValueError(
            f"Model {name!r} defines {clash}, which every config.model already has; rename them."
        )
    MODELS[name] = entry


def model_entry(name: str) -> ModelEntry:
    """The registry entry of network ``name``; ``ValueError`` listing the names otherwise."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; expected one of {tuple(MODELS)}.")
    return MODELS[name]


def default_model_config(name: str) -> ml_collections.ConfigDict:
    """The ``config.model`` section of network ``name`` with every default.

    Example:
      >>> config.model = default_model_config("unet")
      >>> config.model.base_channels = 64
    """
    section = _common_keys(name)
    for key, value in model_entry(name).defaults().items():
        section[key] = value
    return section


def controlnet_model_config(base: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The ``config.model`` section of a ControlNet of the network ``base`` describes: every
    key of the base run's ``config.model`` (a ``'unet'`` or ``'dit'`` section), the name
    ``'controlnet'`` or ``'dit_controlnet'``, and the ControlNet's own keys at their defaults
    (the inverse of :func:`controlnet_base_config`).

    Raises:
      ValueError: a base network without a ControlNet.

    Example:
      >>> config.model = controlnet_model_config(base_config.model)
      >>> config.model.conditioning_embedding_channels = (16, 32)
    """
    names = {base_name: name for name, base_name in _CONTROLNET_BASES.items()}
    if base["name"] not in names:
        raise ValueError(
            f"ControlNets exist for the networks {sorted(names)}, not {base['name']!r}."
        )
    section = default_model_config(names[base["name"]])
    for key, value in dict(base).items():
        if key != "name":
            section[key] = value
    return section


def build_model(model_config: Mapping[str, Any]) -> nn.Module:
    """The network a config's ``model`` section describes.

    Args:
      model_config: the validated ``config.model`` as a mapping (its ``name`` picks the entry).

    Returns:
      The Flax module.
    """
    return model_entry(model_config["name"]).build(model_config)


def check_model_config(model_config: Mapping[str, Any], input_shape: tuple[int, ...]) -> None:
    """Builds the network and checks that it takes inputs of ``input_shape`` (one example).

    Raises:
      ValueError: naming the bad option or the input size and what the network needs.
    """
    if model_config["dtype"] not in DTYPES or model_config["param_dtype"] not in DTYPES:
        raise ValueError(
            f"dtype and param_dtype must be one of {tuple(DTYPES)}, got "
            f"{model_config['dtype']!r} and {model_config['param_dtype']!r}."
        )
    for key in ("dtype", "param_dtype"):
        if model_config[key] == "float16":
            raise ValueError(
                f"{key}='float16' needs loss scaling against gradient underflow, which diffjax "
                f"does not implement; use 'bfloat16' (same memory, float32's range) or 'float32'."
            )
    if model_config["num_classes"] is not None and model_config["num_classes"] < 1:
        raise ValueError(
            f"num_classes must be None (unconditional) or >= 1, got {model_config['num_classes']}."
        )
    entry = model_entry(model_config["name"])
    entry.check_input_shape(entry.build(model_config), tuple(input_shape))
