"""diffusers' UNet2DModel / UNet2DConditionModel in diffjax's UNet (diffjax/models/
unet_weights.py): outputs against diffusers with random weights (fixtures written by
benchmarks/port_reference/make_stable_diffusion_fixture.py in the PyTorch peer venv), both
attention namings, the full-size SD 1.5 / 2.1 tables and the refused options. No torch."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from diffjax.models.pretrained import ARCHITECTURES, from_pretrained, params_from_state_dict
from diffjax.models.unet_weights import (
    diffusers_config_of_unet,
    unet_from_diffusers_config,
    unet_key_table,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# float32 rounding through a few dozen layers of O(1) activations (measured <= 4e-6).
PORT_ATOL = 1e-4


def _config(folder: str) -> dict:
    with open(os.path.join(FIXTURES, folder, "config.json")) as file:
        return json.load(file)


@pytest.mark.parametrize(
    "folder, outputs",
    [
        ("tiny_sd/unet", "tiny_sd"),  # SD 1: conv projections, 2 layers per block
        ("unet_sd2", "unet_sd2"),  # SD 2: linear projections, heads of one width, depth 2
        ("ddpm_unet", "ddpm_unet"),  # DDPM: self-attention, its embedding and padding
    ],
)
def test_unet_matches_diffusers(folder, outputs):
    module, params = from_pretrained(os.path.join(FIXTURES, folder))
    expected = np.load(os.path.join(FIXTURES, outputs, "outputs.npz"))
    cond = {"context": expected["context"]} if "context" in expected else {}
    got = module.apply({"params": params}, expected["x"], expected["t"], cond)
    np.testing.assert_allclose(got, expected["unet"], atol=PORT_ATOL)


def test_the_attention_names_before_diffusers_0_14_load_the_same_params():
    folder = os.path.join(FIXTURES, "ddpm_unet")
    module, params = from_pretrained(folder)
    state = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in state.items():
        for new, former in old.items():
            key = key.replace(f".{new}.", f".{former}.")
        legacy[key] = value
    assert legacy.keys() != state.keys()
    reloaded = params_from_state_dict(module, ARCHITECTURES["UNet2DModel"], legacy, source="old")
    assert jax.tree.structure(reloaded) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, reloaded, params)


@pytest.mark.parametrize("name", ["sd15_unet", "sd21_unet"])
def test_full_size_key_tables_match_diffusers(name):
    with open(os.path.join(FIXTURES, "published_shapes.json")) as file:
        published = json.load(file)[name]
    module = unet_from_diffusers_config(published["config"])
    rules = unet_key_table(module)
    shapes = {key: tuple(shape) for key, shape in published["shapes"].items()}
    fused = {}
    for key, shape in shapes.items():
        for part in ("to_q", "to_k", "to_v"):
            if f".{part}." in key and ".attentions." in key and "transformer_blocks" not in key:
                fused.setdefault(key.replace(f".{part}.", ".to_qkv."), []).append(shape)
    assert not fused  # SD's UNets attend only through transformers
    assert sorted(rule.torch_key for rule in rules) == sorted(shapes)
    for rule in rules:
        torch_layout = np.broadcast_to(np.float32(0), shapes[rule.torch_key])
        assert rule.transform(torch_layout).shape == rule.shape, rule.torch_key
    expected_heads = {"sd15_unet": (8, None), "sd21_unet": (8, 64)}[name]
    assert (module.transformer_heads, module.attention_head_dim) == expected_heads


def test_config_round_trip():
    for folder in ("tiny_sd/unet", "unet_sd2", "ddpm_unet"):
        config = _config(folder)
        module = unet_from_diffusers_config(config)
        written = diffusers_config_of_unet(module, config["in_channels"])
        assert unet_from_diffusers_config(written) == module


@pytest.mark.parametrize(
    "option, value, named",
    [
        ("addition_embed_type", "text_time", "addition_embed_type"),  # SDXL's conditioning
        ("class_embed_type", "timestep", "class_embed_type"),
        ("resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift"),
        ("act_fn", "gelu", "act_fn"),
        ("down_block_types", ["SimpleCrossAttnDownBlock2D"] + ["DownBlock2D"] * 2, "Simple"),
        ("layers_per_block", [1, 2, 1], "layers_per_block"),
    ],
)
def test_options_the_unet_cannot_express_are_named(option, value, named):
    config = dict(_config("tiny_sd/unet"), **{option: value})
    with pytest.raises(ValueError, match=named):
        unet_from_diffusers_config(config)


def test_heads_that_are_neither_one_count_nor_one_width_are_refused():
    config = dict(_config("unet_sd2"), attention_head_dim=[1, 4, 2])
    with pytest.raises(ValueError, match="attention heads"):
        unet_from_diffusers_config(config)
