"""Networks by name, for configs: ``config.model.name`` picks one, its own keys configure it.

Every registered network is a Flax Linen module called as ``module(x, t, labels, train=...)``
with a ``num_classes`` attribute (``None`` for an unconditional model; label ``num_classes`` is
the null label of classifier-free guidance), so the training program, sampling and resuming
work with any of them. An entry lists the config keys of its network (with the type tags of
:mod:`diffjax.training.config_validation`), builds the module from a validated ``config.model``
section, and names the keys that fix the parameters' shapes and meaning (a resumed run must keep
those). A network's options are validated by the network itself (its constructor and its
``check_input_shape``), not by a second copy of the rules.

The DiT, the autoencoder and ControlNet will register here.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.unet import UNet, check_attn_resolutions, check_image_size

__all__ = [
    "COMMON_MODEL_KEYS",
    "DTYPES",
    "MODELS",
    "MODEL_NAMES",
    "ModelEntry",
    "build_model",
    "check_model_config",
    "model_entry",
]

DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

COMMON_MODEL_KEYS: dict[str, str] = {
    "name": "str",
    "num_classes": "int or None",
    "dtype": "str",
    "param_dtype": "str",
}
"""Keys every ``config.model`` has, whatever the network."""


class ModelEntry(NamedTuple):
    """A registered network.

    Attributes:
      keys: the network's own config keys and their type tags.
      build: ``build(model_config) -> module``; ``model_config`` is the validated section.
      check_input_shape: ``check(module, image_shape (H, W, C))`` raising ``ValueError`` for an
        input the network cannot take.
      state_keys: the keys of ``keys`` that fix the parameters (changing them breaks a resume).
    """

    keys: Mapping[str, str]
    build: Callable[[Mapping[str, Any]], nn.Module]
    check_input_shape: Callable[[nn.Module, tuple[int, ...]], None]
    state_keys: tuple[str, ...]


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
    )


def _check_unet_input(model: UNet, image_shape: tuple[int, ...]) -> None:
    for side in image_shape[:2]:
        check_image_size(side, model.channel_mults)
    check_attn_resolutions(image_shape[0], model.channel_mults, model.attn_resolutions)


MODELS: dict[str, ModelEntry] = {
    "unet": ModelEntry(
        keys={
            "base_channels": "int",
            "channel_mults": "tuple of int",
            "num_res_blocks": "int",
            "attn_resolutions": "tuple of int",
            "dropout": "float",
            "num_groups": "int",
            "remat": "bool",
        },
        build=_build_unet,
        check_input_shape=_check_unet_input,
        state_keys=(
            "base_channels",
            "channel_mults",
            "num_res_blocks",
            "attn_resolutions",
            "num_groups",
        ),
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of network ``name``; ``ValueError`` listing the names otherwise."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; expected one of {MODEL_NAMES}.")
    return MODELS[name]


def build_model(model_config: Mapping[str, Any]) -> nn.Module:
    """The network a config's ``model`` section describes.

    Args:
      model_config: the validated ``config.model`` as a mapping (its ``name`` picks the entry).

    Returns:
      The Flax module.
    """
    return model_entry(model_config["name"]).build(model_config)


def check_model_config(model_config: Mapping[str, Any], image_shape: tuple[int, ...]) -> None:
    """Builds the network and checks that it takes ``image_shape`` inputs.

    Raises:
      ValueError: naming the bad option or the image size and what the network needs.
    """
    if model_config["dtype"] not in DTYPES or model_config["param_dtype"] not in DTYPES:
        raise ValueError(
            f"dtype and param_dtype must be one of {tuple(DTYPES)}, got "
            f"{model_config['dtype']!r} and {model_config['param_dtype']!r}."
        )
    entry = model_entry(model_config["name"])
    entry.check_input_shape(entry.build(model_config), tuple(image_shape))
