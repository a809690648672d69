"""The one loading API (diffjax/models/pretrained.py): diffusers / transformers component
folders in and out, strictly, without torch. The port of each network against diffusers'
outputs is in test_unet_weights.py, test_autoencoder.py and test_clip.py."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from diffjax.models import AutoencoderKL, CLIPTextModel, UNet
from diffjax.models.pretrained import (
    ARCHITECTURES,
    from_pretrained,
    load_state_dict,
    save_pretrained,
)
from diffjax.weights import StateDictMismatchError, WeightsChecksumError, sha256_of_file

TINY_SD = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_sd")
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _same(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def unet():
    return from_pretrained(os.path.join(TINY_SD, "unet"))


@pytest.mark.parametrize(
    "component, kind", [("unet", UNet), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)]
)
def test_each_component_loads_and_saves_back_exactly(tmp_path, component, kind):
    module, params = from_pretrained(os.path.join(TINY_SD, component))
    assert isinstance(module, kind)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    save_pretrained(module, params, tmp_path)
    reloaded, reloaded_params = from_pretrained(tmp_path)
    assert reloaded == module
    _same(reloaded_params, params)
    name = "model.safetensors" if component == "text_encoder" else UNET_WEIGHTS
    original = load_file(os.path.join(TINY_SD, component, name))
    written = load_file(os.path.join(tmp_path, name))
    assert sorted(written) == sorted(key for key in original if "position_ids" not in key)
    for key, value in written.items():
        np.testing.assert_array_equal(value, original[key])


@pytest.mark.parametrize(
    "change, named",
    [
        ("drop", "missing key(s): ['down_blocks.0.attentions.0.norm.bias']"),
        ("extra", "unexpected key(s): ['down_blocks.0.attentions.0.extra.weight']"),
        ("reshape", "down_blocks.0.attentions.0.norm.bias: (4,)"),
    ],
)
def test_a_file_that_does_not_fit_is_refused_naming_the_tensor(tmp_path, change, named):
    shutil.copy(os.path.join(TINY_SD, "unet", "config.json"), tmp_path)
    state = load_file(os.path.join(TINY_SD, "unet", UNET_WEIGHTS))
    key = "down_blocks.0.attentions.0.norm.bias"
    if change == "drop":
        del state[key]
    elif change == "extra":
        state["down_blocks.0.attentions.0.extra.weight"] = state[key]
    else:
        state[key] = state[key][:4]
    save_file(state, os.path.join(tmp_path, UNET_WEIGHTS))
    with pytest.raises(StateDictMismatchError) as error:
        from_pretrained(tmp_path)
    assert named in str(error.value)


def test_sharded_files_checksums_and_dtype(tmp_path, unet):
    module, params = unet
    shutil.copy(os.path.join(TINY_SD, "unet", "config.json"), tmp_path)
    state = load_file(os.path.join(TINY_SD, "unet", UNET_WEIGHTS))
    keys = sorted(state)
    shards = {"part-1.safetensors": keys[::2], "part-2.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({key: state[key] for key in names}, os.path.join(tmp_path, name))
    weight_map = {key: name for name, names in shards.items() for key in names}
    with open(os.path.join(tmp_path, UNET_WEIGHTS + ".index.json"), "w") as file:
        json.dump({"metadata": {}, "weight_map": weight_map}, file)
    _same(from_pretrained(tmp_path)[1], params)
    with pytest.raises(ValueError, match="one weights file"):
        from_pretrained(tmp_path, sha256="0" * 64)

    single = os.path.join(TINY_SD, "unet")
    digest = sha256_of_file(os.path.join(single, UNET_WEIGHTS))
    _same(from_pretrained(single, sha256=digest)[1], params)
    with pytest.raises(WeightsChecksumError):
        from_pretrained(single, sha256="0" * 64)
    half, half_params = from_pretrained(single, dtype="bfloat16")
    assert half.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(half_params))


def test_transformers_5_layout_without_the_text_model_prefix_loads(tmp_path):
    folder = os.path.join(TINY_SD, "text_encoder")
    shutil.copy(os.path.join(folder, "config.json"), tmp_path)
    state = load_file(os.path.join(folder, "model.safetensors"))
    save_file({k.removeprefix("text_model."): v for k, v in state.items()},
              os.path.join(tmp_path, "model.safetensors"))  # fmt: skip
    _same(from_pretrained(tmp_path)[1], from_pretrained(folder)[1])


def test_folders_that_are_not_a_component_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pipeline folder.*'text_encoder'.*'unet'"):
        from_pretrained(TINY_SD)
    shutil.copy(os.path.join(TINY_SD, "scheduler", "scheduler_config.json"),
                tmp_path / "config.json")  # fmt: skip
    with pytest.raises(ValueError, match="'DDIMScheduler'; diffjax loads"):
        from_pretrained(tmp_path)
    shutil.copy(os.path.join(TINY_SD, "unet", "config.json"), tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="No weights"):
        from_pretrained(tmp_path)


def test_pickled_checkpoints_go_through_the_restricted_reader():
    # A torch.save zip of tensors (tests/fixtures/torch_checkpoints, written by torch).
    path = os.path.join(os.path.dirname(__file__), "fixtures", "torch_checkpoints", "state_zip.pth")
    state = load_state_dict(path)
    assert state and all(isinstance(value, np.ndarray) for value in state.values())


def test_save_refuses_what_diffusers_cannot_hold(tmp_path):
    module = UNet(base_channels=8, channel_mults=(1, 2), attn_resolutions=(4,), num_groups=4)
    params = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), 0)["params"]
    with pytest.raises(ValueError, match="attn_levels"):
        save_pretrained(module, params, tmp_path)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("name", ["sdxl_vae", "sd3_vae"])
def test_full_size_autoencoder_key_tables_match_diffusers(name):
    with open(os.path.join(os.path.dirname(__file__), "fixtures", "published_shapes.json")) as file:
        published = json.load(file)[name]
    architecture = ARCHITECTURES["AutoencoderKL"]
    module = architecture.build(published["config"])
    rules = architecture.key_table(module, None)
    shapes = {key: tuple(shape) for key, shape in published["shapes"].items()}
    assert sorted(rule.torch_key for rule in rules) == sorted(shapes)
    for rule in rules:
        torch_layout = np.broadcast_to(np.float32(0), shapes[rule.torch_key])
        assert rule.transform(torch_layout).shape == rule.shape, rule.torch_key
