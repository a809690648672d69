"""facebookresearch's DiT checkpoints (``DiT-XL-2-256x256.pt``) in diffjax's DiT
(diffjax/models/dit_weights.py), against a tiny one written by
benchmarks/port_reference/make_dit_checkpoint_fixture.py: random diffusers weights under
facebookresearch's names, the same weights as a diffusers folder, and the outputs of diffusers'
model and of a re-implementation of facebookresearch's forward. No torch."""

import hashlib
import os

import jax
import numpy as np
import pytest

from diffjax.models import DiT, dit_from_checkpoint, from_pretrained
from diffjax.models.dit_weights import (
    check_positions,
    dit_from_diffusers_config,
    dit_from_state_dict,
    facebookresearch_dit_config,
    facebookresearch_key_table,
)
from diffjax.models.pretrained import load_state_dict, read_config
from diffjax.weights import StateDictMismatchError, WeightsChecksumError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "dit_checkpoint")
CHECKPOINT = os.path.join(FIXTURE, "DiT-tiny.pt")
HEADS = 2  # the fixture's; no tensor shape shows it


@pytest.fixture(scope="module")
def state():
    return load_state_dict(CHECKPOINT)


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(FIXTURE, "outputs.npz")))


def _apply(module, params, expected):
    return module.apply(
        {"params": params}, expected["x"], expected["t"], {"label": expected["labels"]}
    )


def test_the_checkpoint_computes_facebookresearch_outputs(expected):
    sha256 = hashlib.sha256(open(CHECKPOINT, "rb").read()).hexdigest()
    module, params = dit_from_checkpoint(CHECKPOINT, num_heads=HEADS, sha256=sha256)
    assert module.time_freq_shift == 0.0 and module.learned_variance
    # The sinusoid of t = 999 in float32 carries ~1000 * 2^-24 of angle error, which two orders
    # of the same float32 operations round differently (measured 1.1e-5 at t = 999).
    got = _apply(module, params, expected)
    np.testing.assert_allclose(got, expected["out_facebookresearch"], atol=1e-4)
    # diffusers' conversion keeps the weights but not the sinusoid (10000^(-k/127)): the same
    # weights compute another network there, by O(1) at t = 999.
    assert np.max(np.abs(got - expected["out"])) > 0.1


def test_the_diffusers_folder_of_the_weights_computes_diffusers_outputs(expected):
    module, params = from_pretrained(os.path.join(FIXTURE, "diffusers"))
    assert module.time_freq_shift == 1.0
    np.testing.assert_allclose(_apply(module, params, expected), expected["out"], atol=1e-4)


def test_a_wrong_checksum_is_refused():
    with pytest.raises(WeightsChecksumError):
        dit_from_checkpoint(CHECKPOINT, num_heads=HEADS, sha256="0" * 64)


def test_the_config_is_read_off_the_shapes(state):
    config = facebookresearch_dit_config(state, HEADS)
    published = read_config(os.path.join(FIXTURE, "diffusers"))
    assert config == {key: published[key] for key in config}
    module, _ = dit_from_state_dict(state, num_heads=HEADS)
    assert module == DiT(
        patch_size=2, hidden_size=16, depth=2, num_heads=2, num_classes=10, in_channels=4,
        learn_sigma=True, sample_size=8, mlp_norm_epsilon=1e-6, time_freq_shift=0.0,
    )  # fmt: skip


def test_it_equals_the_diffusers_folder_of_the_same_weights(state):
    module, params = dit_from_state_dict(state, num_heads=HEADS)
    folder_module, folder_params = from_pretrained(os.path.join(FIXTURE, "diffusers"))
    assert module == folder_module.clone(time_freq_shift=0.0)
    assert jax.tree.structure(params) == jax.tree.structure(folder_params)
    jax.tree.map(np.testing.assert_array_equal, params, folder_params)


def _shapes_only(width: int, depth: int = 1) -> dict[str, np.ndarray]:
    """A facebookresearch DiT's config tensors (zeros, never allocated) at ``width``."""
    zero = np.float32(0)
    shapes = {
        "x_embedder.proj.weight": (width, 4, 2, 2),
        "y_embedder.embedding_table.weight": (1001, width),
        "final_layer.linear.weight": (32, width),
        "pos_embed": (1, 256, width),
        **{f"blocks.{i}.attn.qkv.weight": (3 * width, width) for i in range(depth)},
    }
    return {key: np.broadcast_to(zero, shape) for key, shape in shapes.items()}


@pytest.mark.parametrize("width, heads", [(384, 6), (768, 12), (1024, 16), (1152, 16)])
def test_the_heads_follow_the_preset_of_the_width(width, heads):
    config = facebookresearch_dit_config(_shapes_only(width, depth=28))
    assert config["num_attention_heads"] == heads and config["num_layers"] == 28
    assert config["sample_size"] == 32 and config["num_embeds_ada_norm"] == 1000
    assert config["out_channels"] == 8  # learned variance: 2 C


def test_a_width_without_preset_needs_a_dividing_num_heads():
    assert facebookresearch_dit_config(_shapes_only(24), 3)["attention_head_dim"] == 8
    with pytest.raises(ValueError, match="num_heads=16"):
        facebookresearch_dit_config(_shapes_only(24))


def test_positions_stored_in_half_precision_are_accepted(state):
    for dtype in (np.float16, jax.numpy.bfloat16):
        check_positions(state["pos_embed"].astype(dtype))


@pytest.mark.parametrize(
    "change",
    [
        lambda positions: positions + 2e-7,  # beyond float32's rounding of the table
        lambda positions: np.random.default_rng(0).normal(size=positions.shape) * 0.02,  # learned
        lambda positions: positions[:, ::-1],  # another order
    ],
)
def test_other_positions_are_refused(state, change):
    changed = {**state, "pos_embed": change(state["pos_embed"]).astype(np.float32)}
    with pytest.raises(StateDictMismatchError, match="pos_embed is not DiT's fixed 2-D sin-cos"):
        dit_from_state_dict(changed, num_heads=HEADS)


def test_a_non_square_position_table_is_refused(state):
    changed = {**state, "pos_embed": state["pos_embed"][:, :15]}
    with pytest.raises(StateDictMismatchError, match=r"pos_embed has shape \(1, 15, 16\)"):
        dit_from_state_dict(changed, num_heads=HEADS)


@pytest.mark.parametrize("key", ["blocks.1.mlp.fc2.bias", "blocks.0.attn.qkv.weight", "pos_embed"])
def test_a_missing_key_is_named(state, key):
    changed = {name: value for name, value in state.items() if name != key}
    with pytest.raises(StateDictMismatchError, match=key.replace(".", r"\.")):
        dit_from_state_dict(changed, num_heads=HEADS)


def test_an_unexpected_key_is_named(state):
    changed = {**state, "final_layer.norm_final.weight": np.ones(16, np.float32)}
    with pytest.raises(StateDictMismatchError, match=r"unexpected key\(s\): \['final_layer"):
        dit_from_state_dict(changed, num_heads=HEADS)


def test_a_misshapen_fused_projection_is_named(state):
    changed = {**state, "blocks.0.attn.qkv.bias": state["blocks.0.attn.qkv.bias"][:47]}
    with pytest.raises(StateDictMismatchError, match=r"wrong shape.*blocks\.0\.attn\.qkv\.bias"):
        dit_from_state_dict(changed, num_heads=HEADS)


def test_the_dtype_is_set(state):
    module, params = dit_from_state_dict(state, num_heads=HEADS, dtype="bfloat16")
    assert module.dtype == module.param_dtype == jax.numpy.bfloat16
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(jax.numpy.bfloat16)}


def test_the_key_table_names_the_published_dit_xl_2_keys():
    keys = {"x_embedder.proj.weight", "x_embedder.proj.bias", "y_embedder.embedding_table.weight"}
    keys |= {f"t_embedder.mlp.{i}.{part}" for i in (0, 2) for part in ("weight", "bias")}
    layers = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
    keys |= {
        f"blocks.{b}.{n}.{part}" for b in range(28) for n in layers for part in ("weight", "bias")
    }
    keys |= {
        f"final_layer.{n}.{part}"
        for n in ("linear", "adaLN_modulation.1")
        for part in ("weight", "bias")
    }
    config = facebookresearch_dit_config(_shapes_only(1152, depth=28))
    module = dit_from_diffusers_config(config)
    assert module == DiT(sample_size=32, in_channels=4, learn_sigma=True)  # DiT-XL/2 at 256x256
    assert {rule.torch_key for rule in facebookresearch_key_table(module)} == keys


def test_from_pretrained_reads_the_checkpoint_file(expected):
    module, params = from_pretrained(CHECKPOINT)
    direct_module, direct_params = dit_from_checkpoint(CHECKPOINT)
    assert module == direct_module
    jax.tree.map(np.testing.assert_array_equal, params, direct_params)
    with pytest.raises(ValueError, match="variant='fp16' picks a weights file"):
        from_pretrained(CHECKPOINT, variant="fp16")
