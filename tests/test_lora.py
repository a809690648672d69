"""LoRA on parameter pytrees (diffjax/lora.py): a new LoRA changes nothing, merge and unmerge
invert each other, a convolution's LoRA is the base convolution plus a rank-r convolution
followed by a 1x1 one (PEFT's and kohya's factorisation), and the target sets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.lora import (
    flat_lora,
    init_lora,
    lora_paths,
    lora_rank,
    lora_scale,
    merge,
    nested_lora,
    unmerge,
)

pytestmark = pytest.mark.usefixtures("unoptimized")


def _unet_params(**changes):
    options = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                   attn_resolutions=(4,), num_groups=4, dropout=0.0)  # fmt: skip
    unet = dj.UNet(**{**options, **changes})
    x = jnp.zeros((1, 8, 8, 1))
    cond = {} if unet.context_dim is None else {"context": jnp.zeros((1, 3, unet.context_dim))}
    return unet, unet.init(jax.random.key(0), x, jnp.zeros((1,)), cond)["params"]


def _random_up(lora, key=1):
    return nested_lora({
        path: dict(pair, up=jax.random.normal(jax.random.fold_in(jax.random.key(key), i),
                                              pair["up"].shape))
        for i, (path, pair) in enumerate(sorted(flat_lora(lora).items()))
    })  # fmt: skip


def test_a_new_lora_leaves_the_network_exactly_as_it_was():
    _, params = _unet_params()
    lora = init_lora(jax.random.key(1), params, 2)
    merged = merge(params, lora, lora_scale(8.0, 2))
    assert jax.tree.all(jax.tree.map(np.array_equal, merged, params))
    assert lora_rank(lora) == 2 and all(
        np.all(pair["up"] == 0) for pair in flat_lora(lora).values()
    )


def test_merge_then_unmerge_returns_the_base_to_float32_rounding():
    """Two float32 roundings of values of magnitude |W| + |scale delta| <= m: at most 2 m
    2^-24 apart."""
    _, params = _unet_params()
    # Rank 1: the output convolution has one channel.
    lora = _random_up(init_lora(jax.random.key(1), params, 1, targets="all"))
    scale = lora_scale(2.0, 1)
    merged = merge(params, lora, scale)
    assert not jax.tree.all(jax.tree.map(np.array_equal, merged, params))
    back = unmerge(merged, lora, scale)
    for base, restored, adapted in zip(*(jax.tree.leaves(t) for t in (params, back, merged))):
        bound = 2 * 2.0**-24 * (np.abs(base).max() + np.abs(adapted - base).max())
        np.testing.assert_allclose(restored, base, rtol=0, atol=bound)


def test_a_convolutions_lora_is_a_rank_r_convolution_then_a_1x1_one():
    """conv(x, W + s down@up) = conv(x, W) + s conv1x1(conv(x, down), up): the factor layouts
    are those of PEFT's and kohya's Conv2d LoRA (lora_A a k x k conv to r channels, lora_B a
    1x1 conv)."""
    conv = nn.Conv(6, (3, 3))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    params = conv.init(jax.random.key(1), x)["params"]
    lora = _random_up(init_lora(jax.random.key(2), params, 2, targets="all"))
    pair = lora["kernel"]
    merged = merge(params, lora, 0.5)
    adapted = conv.apply({"params": merged}, x)
    down = jax.lax.conv_general_dilated(x, pair["down"], (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
    expected = conv.apply({"params": params}, x) + 0.5 * down @ pair["up"]
    np.testing.assert_allclose(adapted, expected, rtol=1e-5, atol=1e-5)


def test_target_sets():
    """'attention': DDPM's fused qkv and its output projection; SD's to_q/to_k/to_v/to_out
    (not its proj_in/proj_out or feed-forward); 'all': every kernel; any regular expression."""
    _, ddpm = _unet_params()
    assert lora_paths(ddpm) == [
        "down_1_attn_0/proj_out/kernel", "down_1_attn_0/qkv/kernel", "mid_attn/proj_out/kernel",
        "mid_attn/qkv/kernel", "up_1_attn_0/proj_out/kernel", "up_1_attn_0/qkv/kernel",
        "up_1_attn_1/proj_out/kernel", "up_1_attn_1/qkv/kernel",
    ]  # fmt: skip
    _, sd = _unet_params(context_dim=8, transformer_heads=2)
    attention = lora_paths(sd)
    assert attention and all(
        path.split("/")[-2] in ("to_q", "to_k", "to_v", "to_out") for path in attention
    )
    assert len(lora_paths(sd, "all")) > len(attention)
    assert lora_paths(sd, r"mid_attn/.*/attn2/to_k/kernel$") == [
        "mid_attn/transformer_blocks_0/attn2/to_k/kernel"
    ]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: init_lora(jax.random.key(0), p, 0), "rank must be an int >= 1"),
        (lambda p: init_lora(jax.random.key(0), p, 100), "rank=100 exceeds the sides"),
        (lambda p: init_lora(jax.random.key(0), p, 10, targets="conv_in"), "rank=10 exceeds"),
        (lambda p: lora_paths(p, "nothing/kernel$"), "selects no Dense or convolution kernel"),
        (lambda p: lora_paths(p, "(unclosed"), "a regular expression over kernel paths"),
        (
            lambda p: merge(p, {"missing": {"kernel": {"down": 0, "up": 0}}}, 1.0),
            "adapts kernels these parameters lack",
        ),
    ],
)
def test_bad_lora_arguments_are_named(call, message):
    _, params = _unet_params()
    with pytest.raises(ValueError, match=message):
        call(params)
