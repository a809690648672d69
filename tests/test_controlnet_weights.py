"""diffusers' ControlNetModel in diffjax's ControlNet (diffjax/models/controlnet_weights.py):
residuals against diffusers with random weights (fixtures written by
benchmarks/port_reference/make_controlnet_fixture.py in the PyTorch peer venv), the folder
written back, the full-size SD 1.5 / 2.1 tables and the refused options. No torch."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from diffjax.models import ControlNet, from_pretrained, save_pretrained
from diffjax.models.controlnet_weights import (
    controlnet_from_diffusers_config,
    controlnet_key_table,
    diffusers_config_of_controlnet,
)
from diffjax.weights import StateDictMismatchError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "controlnet")
WEIGHTS = "diffusion_pytorch_model.safetensors"
# float32 rounding through the encoder's few dozen layers of O(10) activations (measured
# <= 4e-5).
PORT_ATOL = 1e-4

pytestmark = pytest.mark.usefixtures("unoptimized_module")  # tiny networks: compiles dominate


def _config(variant: str) -> dict:
    with open(os.path.join(FIXTURES, variant, "config.json")) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def loaded():
    return {variant: from_pretrained(os.path.join(FIXTURES, variant)) for variant in ("sd1", "sd2")}


@pytest.mark.parametrize(
    "variant, strides",
    [
        ("sd1", 3),  # SD 1: conv projections, four encoder widths, an 8x control image
        ("sd2", 1),  # SD 2: linear projections, depth 2, two layers, a 1-channel 2x control
    ],
)
def test_controlnet_matches_diffusers(loaded, variant, strides):
    module, params = loaded[variant]
    assert isinstance(module, ControlNet)
    expected = np.load(os.path.join(FIXTURES, variant, "outputs.npz"))
    assert expected["control"].shape[1] == expected["x"].shape[1] * 2**strides
    cond = {"context": expected["context"], "control": expected["control"]}
    skips, middle = module.apply({"params": params}, expected["x"], expected["t"], cond)
    count = len([key for key in expected if key.startswith("down_")])
    assert len(skips) == count
    for index, skip in enumerate(skips):
        np.testing.assert_allclose(skip, expected[f"down_{index}"], atol=PORT_ATOL)
    np.testing.assert_allclose(middle, expected["mid"], atol=PORT_ATOL)


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_save_pretrained_writes_the_folder_back(loaded, tmp_path, variant):
    module, params = loaded[variant]
    save_pretrained(module, params, tmp_path)
    original = load_file(os.path.join(FIXTURES, variant, WEIGHTS))
    written = load_file(os.path.join(tmp_path, WEIGHTS))
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(written[key], value)
    with open(os.path.join(tmp_path, "config.json")) as file:
        config = json.load(file)
    for key in ("in_channels", "conditioning_channels", "conditioning_embedding_out_channels"):
        assert config[key] == _config(variant)[key]
    assert from_pretrained(tmp_path)[0] == module


@pytest.mark.parametrize("name", ["sd15_controlnet", "sd21_controlnet"])
def test_full_size_key_tables_match_diffusers(name):
    with open(os.path.join(FIXTURES, "published_shapes.json")) as file:
        published = json.load(file)[name]
    module = controlnet_from_diffusers_config(published["config"])
    assert module.conditioning_embedding_channels == (16, 32, 96, 256)
    rules = controlnet_key_table(module)
    shapes = {key: tuple(shape) for key, shape in published["shapes"].items()}
    assert sorted(rule.torch_key for rule in rules) == sorted(shapes)
    for rule in rules:
        torch_layout = np.broadcast_to(np.float32(0), shapes[rule.torch_key])
        assert rule.transform(torch_layout).shape == rule.shape, rule.torch_key


def test_config_round_trip():
    for variant in ("sd1", "sd2"):
        config = _config(variant)
        module = controlnet_from_diffusers_config(config)
        written = diffusers_config_of_controlnet(
            module, config["in_channels"], config["conditioning_channels"]
        )
        assert controlnet_from_diffusers_config(written) == module


@pytest.mark.parametrize(
    "option, value, named",
    [
        ("controlnet_conditioning_channel_order", "bgr", "channel_order"),
        ("global_pool_conditions", True, "global_pool_conditions"),
        ("mid_block_type", "UNetMidBlock2D", "mid_block_type"),
        ("class_embed_type", "timestep", "class_embed_type"),
        ("addition_embed_type", "text_time", "addition_embed_type"),  # SDXL's ControlNets
        ("down_block_types", ["SimpleCrossAttnDownBlock2D", "DownBlock2D"], "Simple"),
    ],
)
def test_options_the_controlnet_cannot_express_are_named(option, value, named):
    config = dict(_config("sd1"), **{option: value})
    with pytest.raises(ValueError, match=named):
        controlnet_from_diffusers_config(config)


def test_a_file_missing_a_zero_convolution_is_refused_naming_it(tmp_path):
    shutil.copy(os.path.join(FIXTURES, "sd1", "config.json"), tmp_path)
    state = load_file(os.path.join(FIXTURES, "sd1", WEIGHTS))
    del state["controlnet_down_blocks.2.bias"]
    save_file(state, os.path.join(tmp_path, WEIGHTS))
    with pytest.raises(StateDictMismatchError, match=r"controlnet_down_blocks\.2\.bias"):
        from_pretrained(tmp_path)


def test_save_refuses_a_controlnet_without_cross_attention(tmp_path):
    module = ControlNet(
        base_channels=8, channel_mults=(1, 2), attn_resolutions=(), num_groups=4,
        conditioning_embedding_channels=(8, 16),
    )  # fmt: skip
    x, control = jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 1))
    params = jax.eval_shape(
        lambda: module.init(jax.random.key(0), x, 0, {"control": control})["params"]
    )
    with pytest.raises(ValueError, match="context_dim"):
        save_pretrained(module, params, tmp_path)
    assert not os.listdir(tmp_path)
