"""CLIP's text encoder (diffjax/models/clip.py, clip_weights.py) against transformers'
CLIPTextModel with random weights (quick_gelu and gelu), its weight files (diffusers folders,
SD 1 / SD 2 single-file checkpoints) and the full-size SD 1.5 / 2.1 key tables; the fixtures
are written by benchmarks/port_reference/make_clip_fixture.py. No torch."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from diffjax.models import CLIPTextModel, from_pretrained
from diffjax.models.clip_weights import (
    clip_key_table,
    clip_state_from_single_file,
    clip_text_config_of,
    clip_text_from_config,
)
from diffjax.models.pretrained import ARCHITECTURES, params_from_state_dict
from diffjax.weights import StateDictMismatchError, WeightsChecksumError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "clip_text")
GELU = os.path.join(FIXTURE, "text_encoder_gelu")

# float32 rounding through 2-3 layers on O(1) activations (measured differences <= 3e-6).
PORT_ATOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    return np.load(os.path.join(FIXTURE, "outputs.npz"))


@pytest.fixture(scope="module")
def gelu_model():
    return load_clip_text_model(GELU)


def load_clip_text_model(folder, **options):
    module, params = from_pretrained(folder, **options)
    with open(os.path.join(folder, "config.json")) as file:
        return module, params, json.load(file)


def clip_params_from_state(module, state, *, source):
    return params_from_state_dict(module, ARCHITECTURES["CLIPTextModel"], state, source=source)


def _equal_trees(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        jax.tree.leaves(jax.tree.map(np.array_equal, a, b))
    )


@pytest.mark.parametrize("folder", ["text_encoder", "text_encoder_gelu"])
@pytest.mark.parametrize("inputs", ["", "random_"])
def test_outputs_match_transformers(reference, folder, inputs):
    module, params, config = load_clip_text_model(os.path.join(FIXTURE, folder))
    assert module.hidden_act == config["hidden_act"]
    ids = reference[f"{folder}/{inputs}ids"]
    apply = jax.jit(module.apply, static_argnames="skip_layers")
    hidden, pooled = apply({"params": params}, ids)
    skipped, _ = apply({"params": params}, ids, skip_layers=1)
    assert hidden.dtype == pooled.dtype == jnp.float32
    assert hidden.shape == (*ids.shape, module.hidden_size) and pooled.shape == (len(ids), 8)
    expected = dict(hidden=f"{inputs}last_hidden_state", skipped=f"{inputs}skip1")
    expected.update(pooled=f"{inputs}pooler_output")
    for name, value in dict(hidden=hidden, skipped=skipped, pooled=pooled).items():
        np.testing.assert_allclose(
            value, reference[f"{folder}/{expected[name]}"], atol=PORT_ATOL, err_msg=name
        )


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_single_file_layouts_load_to_the_folders_params(gelu_model, name):
    module, params, _ = gelu_model
    checkpoint = load_file(os.path.join(FIXTURE, f"{name}_single_file.safetensors"))
    state = clip_state_from_single_file(checkpoint, module.num_layers)
    assert _equal_trees(clip_params_from_state(module, state, source=name), params)


def test_openclip_layout_drops_only_the_head_and_later_layers(gelu_model):
    module, _, _ = gelu_model
    checkpoint = load_file(os.path.join(FIXTURE, "sd2_single_file.safetensors"))
    state = clip_state_from_single_file(checkpoint, module.num_layers)
    assert sorted(state) == sorted(rule.torch_key for rule in clip_key_table(module))
    # One more layer kept: it is named as unexpected, with its torch name.
    with pytest.raises(StateDictMismatchError, match=r"text_model\.encoder\.layers\.3\."):
        clip_params_from_state(
            module, clip_state_from_single_file(checkpoint, module.num_layers + 1), source="sd2"
        )


def test_single_file_without_a_text_encoder_is_refused():
    with pytest.raises(ValueError, match="no text encoder"):
        clip_state_from_single_file({"model.diffusion_model.x": np.zeros(2)}, 12)


def test_unknown_key_under_the_text_encoder_prefix_is_named(gelu_model):
    module, _, _ = gelu_model
    checkpoint = load_file(os.path.join(FIXTURE, "sd2_single_file.safetensors"))
    checkpoint["cond_stage_model.model.attn_mask"] = np.zeros((77, 77), np.float32)
    state = clip_state_from_single_file(checkpoint, module.num_layers)
    with pytest.raises(StateDictMismatchError, match="cond_stage_model.model.attn_mask"):
        clip_params_from_state(module, state, source="sd2")


def test_published_prefixed_layout_with_position_ids_loads(gelu_model):
    module, params, _ = gelu_model
    state = {
        f"text_model.{k}": v for k, v in load_file(os.path.join(GELU, "model.safetensors")).items()
    }
    state["text_model.embeddings.position_ids"] = np.arange(77)[None]
    assert _equal_trees(clip_params_from_state(module, state, source="prefixed"), params)


@pytest.mark.parametrize(
    "change, named",
    [
        ("missing", "text_model.encoder.layers.1.mlp.fc2.bias"),
        ("extra", "text_model.encoder.layers.0.mlp.fc3.weight"),
        ("misshapen", "text_model.encoder.layers.2.self_attn.k_proj.weight"),
    ],
)
def test_mismatched_file_is_refused_naming_the_key(tmp_path, change, named):
    shutil.copy(os.path.join(GELU, "config.json"), tmp_path)
    state = load_file(os.path.join(GELU, "model.safetensors"))
    key = named.removeprefix("text_model.")
    if change == "missing":
        del state[key]
    elif change == "extra":
        state[key] = np.zeros((8, 12), np.float32)
    else:
        state[key] = state[key][:, :4].copy()
    save_file(state, os.path.join(tmp_path, "model.safetensors"))
    with pytest.raises(StateDictMismatchError) as error:
        load_clip_text_model(tmp_path)
    kind = dict(missing="missing", extra="unexpected", misshapen="wrong shape")[change]
    assert kind in str(error.value) and named in str(error.value)


def test_folder_variant_checksum_and_missing_files(tmp_path, gelu_model):
    _, params, _ = gelu_model
    shutil.copy(os.path.join(GELU, "config.json"), tmp_path)
    state = load_file(os.path.join(GELU, "model.safetensors"))
    save_file(
        {k: v.astype(np.float16) for k, v in state.items()},
        str(tmp_path / "model.fp16.safetensors"),
    )
    _, half, _ = load_clip_text_model(tmp_path, variant="fp16", dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(half))
    # Relative rounding of float16 storage (unit roundoff 2^-11) then bfloat16 (2^-8).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.float32(a), b, rtol=2**-8 + 2**-11, atol=0),
        half, params,
    )  # fmt: skip
    with pytest.raises(WeightsChecksumError):
        load_clip_text_model(tmp_path, variant="fp16", sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_clip_text_model(tmp_path)
    os.remove(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_clip_text_model(tmp_path, variant="fp16")


@pytest.mark.parametrize("name", ["sd15", "sd21"])
def test_full_size_key_tables_match_transformers(name):
    with open(os.path.join(FIXTURE, f"{name}_text_encoder_shapes.json")) as file:
        published = json.load(file)
    module = clip_text_from_config(published["config"])
    expected = dict(sd15=(768, 12, "quick_gelu"), sd21=(1024, 23, "gelu"))[name]
    assert (module.hidden_size, module.num_layers, module.hidden_act) == expected
    rules = {rule.torch_key: rule for rule in clip_key_table(module)}
    assert sorted(rules) == sorted(published["shapes"])
    for key, shape in published["shapes"].items():
        # The transform of a zero-stride view gives the Flax shape without allocating.
        flax_shape = rules[key].transform(np.broadcast_to(np.float32(0), shape)).shape
        assert flax_shape == rules[key].shape, key


def test_config_round_trip_and_refusals(gelu_model):
    module, _, config = gelu_model
    written = clip_text_config_of(module)
    assert written["architectures"] == ["CLIPTextModel"]
    assert written["model_type"] == "clip_text_model"
    assert {k: v for k, v in config.items() if k in written} == written
    assert clip_text_from_config(written) == module
    for change, match in [
        (dict(hidden_act="relu"), "hidden_act"),
        (dict(architectures=["CLIPTextModelWithProjection"]), "CLIPTextModelWithProjection"),
        (dict(model_type="clip"), "model_type"),
        (dict(eos_token_id=[2, 3]), "eos_token_id"),
        (dict(num_attention_heads=3), "num_attention_heads"),
    ]:
        with pytest.raises(ValueError, match=match):
            clip_text_from_config({**config, **change})


@pytest.mark.parametrize(
    "ids, skip_layers, match",
    [
        (np.zeros((1, 5), np.float32), 0, "integer token ids"),
        (np.zeros((5,), np.int32), 0, r"\[B, L\]"),
        (np.zeros((1, 78), np.int32), 0, "length 78.*max_positions=77"),
        (np.zeros((1, 5), np.int32), 4, "skip_layers=4"),
    ],
)
def test_bad_inputs_raise_at_trace_time(gelu_model, ids, skip_layers, match):
    module, params, _ = gelu_model
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: module.apply({"params": params}, ids, skip_layers=skip_layers))


def test_bfloat16_compute_returns_float32_close_to_float32(reference, gelu_model):
    module, params, _ = gelu_model
    ids = reference["text_encoder_gelu/ids"]
    hidden, pooled = jax.jit(module.clone(dtype=jnp.bfloat16).apply)({"params": params}, ids)
    assert hidden.dtype == pooled.dtype == jnp.float32
    # bfloat16's 8-bit mantissa through 3 layers on values up to ~3 (measured: 0.05).
    np.testing.assert_allclose(hidden, reference["text_encoder_gelu/last_hidden_state"], atol=0.2)


def test_default_fields_are_sd1s_text_encoder():
    module = CLIPTextModel()
    fields = (module.hidden_size, module.num_layers, module.num_heads, module.hidden_act)
    assert fields == (768, 12, 12, "quick_gelu") and module.eos_token_id == 2
