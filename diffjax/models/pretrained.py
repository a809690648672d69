"""Published model folders in and out, without torch: ``from_pretrained`` and
``save_pretrained``.

A diffusers (or transformers) component folder holds ``config.json`` and the weights
(``diffusion_pytorch_model.safetensors`` or ``model.safetensors``, possibly sharded with a
``*.safetensors.index.json``, or a ``.bin`` pickle read by the restricted reader of
:mod:`diffjax.weights.torch_checkpoint`). The config's class picks an :class:`Architecture`:
how the config maps onto a diffjax module and back, and the key table naming the published
tensor of every Flax parameter. Loading is strict: a config option the module cannot express
is a ``ValueError`` naming it, and a missing, unexpected or misshapen tensor a
:class:`~diffjax.weights.StateDictMismatchError` naming each (never a warning).

========================  ============================================================
``_class_name``           diffjax module
========================  ============================================================
``AutoencoderKL``         :class:`~diffjax.models.AutoencoderKL` (SD 1/2, SDXL, SD 3)
``UNet2DConditionModel``  :class:`~diffjax.models.UNet` with cross-attention (SD 1/2)
``UNet2DModel``           :class:`~diffjax.models.UNet` (DDPM's published models)
``DiTTransformer2DModel`` :class:`~diffjax.models.DiT` (the published DiT checkpoints)
``ControlNetModel``       :class:`~diffjax.models.ControlNet` (SD 1/2 ControlNets)
``SD3Transformer2DModel`` :class:`~diffjax.models.MMDiT` (SD 3 and 3.5's transformer)
``CLIPTextModel``         :class:`~diffjax.models.CLIPTextModel` (transformers' config)
========================  ============================================================
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

import diffjax.models.autoencoder_weights as autoencoder_weights
import diffjax.models.clip as clip
import diffjax.models.clip_weights as clip_weights
import diffjax.models.controlnet_weights as controlnet_weights
import diffjax.models.dit_weights as dit_weights
import diffjax.models.mmdit_weights as mmdit_weights
import diffjax.models.unet_weights as unet_weights
from diffjax.weights.files import verify_checksum
from diffjax.weights.key_tables import KeyRule, apply_key_table, conv_kernel, linear_kernel
from diffjax.weights.state_dict import load_state_dict

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "architecture_of",
    "from_pretrained",
    "load_state_dict",
    "params_from_state_dict",
    "read_config",
    "save_pretrained",
    "state_dict_from_params",
]

_SAFETENSORS_NAMES = ("diffusion_pytorch_model", "model")
_PICKLE_NAMES = ("diffusion_pytorch_model.bin", "pytorch_model.bin")


def _same(state: dict[str, np.ndarray], rules: list[KeyRule]) -> dict[str, np.ndarray]:
    return state


def _same_out(state: dict[str, np.ndarray], module: nn.Module) -> dict[str, np.ndarray]:
    return state


class Architecture(NamedTuple):
    """How one published class maps onto diffjax.

    Attributes:
      build: ``config.json`` (parsed) and module overrides -> the Flax module.
      config_of: ``(module, params)`` -> the ``config.json`` to write.
      key_table: ``(module, params or None)`` -> one key rule per parameter (None: traced
        from the module, allocating nothing).
      weights_name: the weights file ``save_pretrained`` writes.
      read_state: adapts a published state dict before the key table applies (older names,
        fused projections); ``(state, rules) -> state``.
      write_state: its inverse for ``save_pretrained``, ``(state, module) -> state`` (the
        module for buffers computed from its configuration).
      ignored: tensors a published file may carry that are not parameters (buffers).
    """

    build: Callable[..., nn.Module]
    config_of: Callable[[nn.Module, Any], dict[str, Any]]
    key_table: Callable[[nn.Module, Any], list[KeyRule]]
    weights_name: str = "diffusion_pytorch_model.safetensors"
    read_state: Callable[[dict, list], dict] = _same
    write_state: Callable[[dict, nn.Module], dict] = _same_out
    ignored: Callable[[str], bool] = lambda key: False


def _read_unet_state(state: dict, rules: list[KeyRule]) -> dict:
    return unet_weights.fuse_attention_projections(
        unet_weights.rename_legacy_attention(state), rules
    )


def _unet_config_of(module: nn.Module, params: Any) -> dict[str, Any]:
    return unet_weights.diffusers_config_of_unet(module, int(params["conv_in"]["kernel"].shape[2]))


_UNET = Architecture(
    build=unet_weights.unet_from_diffusers_config,
    config_of=_unet_config_of,
    key_table=unet_weights.unet_key_table,
    read_state=_read_unet_state,
    write_state=lambda state, module: unet_weights.split_attention_projections(state),
)


def _controlnet_config_of(module: nn.Module, params: Any) -> dict[str, Any]:
    return controlnet_weights.diffusers_config_of_controlnet(
        module,
        int(params["conv_in"]["kernel"].shape[2]),
        int(params["cond_embedding"]["conv_in"]["kernel"].shape[2]),
    )


ARCHITECTURES: dict[str, Architecture] = {
    "AutoencoderKL": Architecture(
        build=autoencoder_weights.autoencoder_from_diffusers_config,
        config_of=lambda module, params: autoencoder_weights.diffusers_config_of_autoencoder(
            module
        ),
        key_table=lambda module, params: autoencoder_weights.autoencoder_key_table(module),
        read_state=lambda state, rules: unet_weights.rename_legacy_attention(state),
    ),
    "UNet2DConditionModel": _UNET,
    "UNet2DModel": _UNET,
    "DiTTransformer2DModel": Architecture(
        build=dit_weights.dit_from_diffusers_config,
        config_of=lambda module, params: dit_weights.diffusers_config_of_dit(
            module, int(params["pos_embed"]["proj"]["kernel"].shape[2])
        ),
        key_table=dit_weights.dit_key_table,
        read_state=lambda state, rules: dit_weights.drop_embedder_copies(state),
        write_state=lambda state, module: dit_weights.add_embedder_copies(state),
    ),
    "ControlNetModel": Architecture(
        build=controlnet_weights.controlnet_from_diffusers_config,
        config_of=_controlnet_config_of,
        key_table=controlnet_weights.controlnet_key_table,
        read_state=controlnet_weights.read_controlnet_state,
        write_state=lambda state, module: unet_weights.split_attention_projections(state),
    ),
    "SD3Transformer2DModel": Architecture(
        build=mmdit_weights.mmdit_from_diffusers_config,
        config_of=lambda module, params: mmdit_weights.diffusers_config_of_mmdit(
            module, int(params["pos_embed"]["proj"]["kernel"].shape[2])
        ),
        key_table=mmdit_weights.mmdit_key_table,
        write_state=mmdit_weights.add_position_buffer,
        ignored=lambda key: key == mmdit_weights.POSITION_BUFFER,
    ),
    "CLIPTextModel": Architecture(
        build=clip_weights.clip_text_from_config,
        config_of=lambda module, params: clip_weights.clip_text_config_of(module),
        key_table=lambda module, params: clip_weights.clip_key_table(module),
        weights_name="model.safetensors",
        read_state=lambda state, rules: clip_weights.published_clip_names(state),
        ignored=lambda key: key == clip_weights.POSITION_IDS,
    ),
}
"""The published classes diffjax loads, by ``config.json`` class name."""


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """A component folder's parsed ``config.json``.

    Raises:
      FileNotFoundError: no ``config.json`` (naming a pipeline folder's components when the
        folder is one).
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        hint = ""
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            with open(os.path.join(folder, "model_index.json")) as file:
                components = sorted(k for k in json.load(file) if not k.startswith("_"))
            hint = f" It is a pipeline folder: name one of its components {components}."
        raise FileNotFoundError(f"No config.json in {folder}.{hint}")
    with open(path) as file:
        return json.load(file)


def architecture_of(config: Mapping[str, Any]) -> tuple[str, Architecture]:
    """``(class name, Architecture)`` of a ``config.json`` (diffusers' ``_class_name`` or
    transformers' ``architectures``).

    Raises:
      ValueError: a class diffjax does not load, naming the ones it does.
    """
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if name not in ARCHITECTURES:
        raise ValueError(f"config.json describes {name!r}; diffjax loads {sorted(ARCHITECTURES)}.")
    return name, ARCHITECTURES[name]


def _weights_files(folder: str, variant: str | None) -> list[str]:
    suffix = f".{variant}" if variant else ""
    for name in _SAFETENSORS_NAMES:
        single = os.path.join(folder, f"{name}{suffix}.safetensors")
        if os.path.isfile(single):
            return [single]
        index = os.path.join(folder, f"{name}.safetensors{suffix}.index.json")
        if not os.path.isfile(index):
            index = os.path.join(folder, f"{name}{suffix}.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as file:
                shards = sorted(set(json.load(file)["weight_map"].values()))
            return [os.path.join(folder, shard) for shard in shards]
    for name in _PICKLE_NAMES:
        path = os.path.join(folder, name.replace(".bin", f"{suffix}.bin"))
        if os.path.isfile(path):
            return [path]
    raise FileNotFoundError(
        f"No weights in {folder}: expected one of "
        f"{[f'{n}{suffix}.safetensors' for n in _SAFETENSORS_NAMES]}, a sharded "
        f"*.safetensors.index.json or {list(_PICKLE_NAMES)}."
    )


def params_from_state_dict(
    module: nn.Module,
    architecture: Architecture,
    state: Mapping[str, np.ndarray],
    *,
    source: str,
    dtype: Any = np.float32,
) -> dict[str, Any]:
    """The module's parameters from a published state dict, strictly (module docstring)."""
    rules = architecture.key_table(module, None)
    state = architecture.read_state(dict(state), rules)
    variables = apply_key_table(
        state, rules, source=source, ignored=architecture.ignored, dtype=np.dtype(dtype)
    )
    return variables["params"]


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    variant: str | None = None,
    sha256: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Loads a published diffusers / transformers component folder into diffjax.

    Args:
      path: a component folder (``.../unet``, ``.../vae``, ``.../text_encoder``, or a model
        repository such as ``google/ddpm-cifar10-32`` downloaded by the user), or one of
        facebookresearch's DiT checkpoints (``DiT-XL-2-256x256.pt``:
        :func:`~diffjax.models.dit_weights.dit_from_checkpoint`, its head count by its width).
      dtype: the module's compute and parameter dtype (``'bfloat16'``, ``jnp.float16``; default
        float32); the parameters are cast to it.
      variant: a weights variant (``'fp16'`` reads ``diffusion_pytorch_model.fp16.
        safetensors``).
      sha256: the weights file's expected SHA-256 (hex), checked before reading; only for a
        single weights file.

    Returns:
      ``(module, params)``: the Flax module and its parameters as NumPy arrays (put them on
      devices with ``jax.device_put``).

    Raises:
      FileNotFoundError: no config or weights.
      ValueError: a class or config option diffjax does not express.
      StateDictMismatchError: tensors that do not fit the config.
      WeightsChecksumError: a checksum mismatch.
      UnsupportedCheckpointError: a pickle holding anything but tensors.

    Example:
      >>> unet, params = dj.models.from_pretrained("stable-diffusion-v1-5/unet")
    """
    folder = os.fspath(path)
    if os.path.isfile(folder) and folder.endswith(".pt"):
        if variant is not None:
            raise ValueError(
                f"variant={variant!r} picks a weights file in a diffusers folder; {folder} is "
                f"one checkpoint file."
            )
        return dit_weights.dit_from_checkpoint(folder, dtype=dtype, sha256=sha256)
    config = read_config(folder)
    _, architecture = architecture_of(config)
    overrides = {} if dtype is None else dict(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype))
    module = architecture.build(config, **overrides)
    files = _weights_files(folder, variant)
    if sha256 is not None:
        if len(files) != 1:
            raise ValueError(f"sha256 checks one weights file; {folder} has {len(files)} shards.")
        verify_checksum(files[0], sha256, f"weights of {folder}")
    state: dict[str, np.ndarray] = {}
    for file in files:
        state.update(load_state_dict(file))
    params = params_from_state_dict(
        module, architecture, state, source=", ".join(files),
        dtype=np.float32 if dtype is None else jnp.dtype(dtype),
    )  # fmt: skip
    return module, params


_TO_TORCH: dict[Callable, Callable[[np.ndarray], np.ndarray]] = {
    conv_kernel: lambda kernel: np.transpose(kernel, (3, 2, 0, 1)),
    linear_kernel: np.transpose,
    unet_weights.pointwise_conv_kernel: lambda kernel: np.transpose(kernel)[:, :, None, None],
}


def state_dict_from_params(
    module: nn.Module, architecture: Architecture, params: Any
) -> dict[str, np.ndarray]:
    """The published state dict of ``params`` (the inverse of :func:`params_from_state_dict`),
    float32 NumPy."""
    flat = traverse_util.flatten_dict(jax.device_get(params))
    state = {}
    for rule in architecture.key_table(module, params):
        value = np.asarray(flat[rule.flax_path[1:]], np.float32)
        state[rule.torch_key] = np.ascontiguousarray(
            _TO_TORCH.get(rule.transform, np.asarray)(value)
        )
    return architecture.write_state(state, module)


def save_pretrained(
    module: nn.Module,
    params: Any,
    folder: str | os.PathLike,
    *,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Writes ``module`` and ``params`` as a diffusers / transformers component folder
    (``config.json`` and safetensors weights) that diffusers, transformers and
    :func:`from_pretrained` load.

    Args:
      module: a :class:`~diffjax.models.UNet` (attention by level), a
        :class:`~diffjax.models.ControlNet` (with cross-attention), an
        :class:`~diffjax.models.AutoencoderKL` or a :class:`~diffjax.models.CLIPTextModel`.
      params: its parameters.
      folder: created if missing; its ``config.json`` and weights file are replaced
        atomically (a failure leaves the previous files).
      config: extra ``config.json`` entries (an autoencoder's ``scaling_factor``, say).

    Raises:
      ValueError: a module or option the published classes cannot hold.
    """
    kinds = {  # a ControlNet is a UNet: it comes first
        controlnet_weights.ControlNet: "ControlNetModel",
        dit_weights.DiT: "DiTTransformer2DModel",
        mmdit_weights.MMDiT: "SD3Transformer2DModel",
        unet_weights.UNet: "UNet2DModel",
        autoencoder_weights.AutoencoderKL: "AutoencoderKL",
        clip.CLIPTextModel: "CLIPTextModel",
    }
    name = next((kinds[kind] for kind in kinds if isinstance(module, kind)), None)
    if name is None:
        raise ValueError(f"save_pretrained writes {sorted(kinds.values())}; got {type(module)}.")
    architecture = ARCHITECTURES[name]
    written = {**architecture.config_of(module, params), **(config or {})}
    state = state_dict_from_params(module, architecture, params)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        save_file(state, os.path.join(scratch, architecture.weights_name))
        with open(os.path.join(scratch, "config.json"), "w") as file:
            json.dump(written, file, indent=2)
        for file_name in (architecture.weights_name, "config.json"):
            os.replace(os.path.join(scratch, file_name), os.path.join(folder, file_name))
