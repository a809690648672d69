"""Original single-file Stable Diffusion checkpoints (diffjax/models/single_file.py): the LDM
names renamed to diffusers' by table, configs read off the shapes. The tiny checkpoint was
written by benchmarks/port_reference/make_stable_diffusion_fixture.py and checked there with
diffusers' own converters; the full-size tables come from models built without memory."""

import json
import os

import jax
import numpy as np
import pytest

from diffjax.models.autoencoder_weights import autoencoder_from_diffusers_config
from diffjax.models.pretrained import from_pretrained
from diffjax.models.single_file import (
    from_single_file,
    infer_clip_text_config,
    infer_unet_config,
    infer_vae_config,
    ldm_unet_to_diffusers,
    ldm_vae_to_diffusers,
)
from diffjax.models.unet_weights import unet_from_diffusers_config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SINGLE_FILE = os.path.join(FIXTURES, "tiny_sd_single_file.safetensors")


def _fake(shapes: dict) -> dict:
    """Zero-memory stand-ins with the given shapes."""
    return {key: np.broadcast_to(np.float32(0), tuple(shape)) for key, shape in shapes.items()}


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_each_network_loads_to_the_folders_params(component):
    folder = os.path.join(FIXTURES, "tiny_sd", component)
    with open(os.path.join(folder, "config.json")) as file:
        config = json.load(file)
    module, params = from_single_file(SINGLE_FILE, component, config=config)
    expected_module, expected = from_pretrained(folder)
    assert module == expected_module
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, params, expected)


@pytest.fixture(scope="module")
def published():
    with open(os.path.join(FIXTURES, "published_shapes.json")) as file:
        return json.load(file)


@pytest.mark.parametrize("name", ["sd15_unet", "sd21_unet"])
def test_full_size_unet_config_and_names_from_the_shapes(published, name):
    state = _fake(published[name]["single_file_shapes"])
    config = infer_unet_config(state)
    assert unet_from_diffusers_config(config) == unet_from_diffusers_config(
        published[name]["config"]
    )
    renamed = ldm_unet_to_diffusers(state, config["layers_per_block"])
    assert {k: list(v.shape) for k, v in renamed.items()} == published[name]["shapes"]


@pytest.mark.parametrize("name", ["sdxl_vae", "sd3_vae"])
def test_full_size_autoencoder_config_and_names_from_the_shapes(published, name):
    state = _fake(published[name]["single_file_shapes"])
    config = infer_vae_config(state)
    expected = published[name]["config"]
    assert autoencoder_from_diffusers_config(config) == autoencoder_from_diffusers_config(expected)
    renamed = ldm_vae_to_diffusers(state, len(config["block_out_channels"]))
    assert {k: list(v.shape) for k, v in renamed.items()} == published[name]["shapes"]


def test_sd2_openclip_text_encoder_config_uses_all_layers_but_the_last():
    width, layers = 1024, 24
    shapes = {
        "model.token_embedding.weight": (49408, width),
        "model.positional_embedding": (77, width),
        **{f"model.transformer.resblocks.{i}.mlp.c_fc.weight": (4 * width, width)
           for i in range(layers)},
    }  # fmt: skip
    config = infer_clip_text_config(_fake(shapes))
    assert config["num_hidden_layers"] == 23 and config["hidden_act"] == "gelu"
    assert config["num_attention_heads"] == 16 and config["intermediate_size"] == 4096


def test_bad_components_are_named(tmp_path):
    with pytest.raises(ValueError, match="component must be one of"):
        from_single_file(SINGLE_FILE, "transformer")
    from safetensors.numpy import save_file

    path = str(tmp_path / "unet_only.safetensors")
    save_file({"model.diffusion_model.out.2.bias": np.zeros(4, np.float32)}, path)
    with pytest.raises(ValueError, match="no tensor under 'first_stage_model.'"):
        from_single_file(path, "vae")
