"""The KL autoencoder (diffjax/models/autoencoder.py) and its published weights
(diffjax/models/autoencoder_weights.py): the port against diffusers' AutoencoderKL, the presets'
shapes and sizes, the float32 redo of an overflowing decode, and the one-line errors.

The fixture tests/fixtures/autoencoder_kl/ is a diffusers AutoencoderKL with random weights in
its published folder format and its outputs on fixed inputs, written by
benchmarks/port_reference/make_autoencoder_fixture.py in the PyTorch peer venv."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.autoencoder import (
    AUTOENCODER_PRESETS,
    AutoencoderKL,
    check_autoencoder_input,
    decode_checked,
    latent_side,
)
from diffjax.models.autoencoder_weights import (
    DIFFUSERS_WEIGHTS_FILE,
    model_config_of,
)
from diffjax.models.diffusers_weights import torch_key_of
from diffjax.models.pretrained import from_pretrained, read_config
from diffjax.models.registry import build_model
from diffjax.weights import StateDictMismatchError, WeightsChecksumError, sha256_of_file

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "autoencoder_kl")

# float32 rounding: each output sums ~10^2-10^3 products through about twenty layers; a
# relative error of a few 2^-24 per layer gives ~1e-5 on outputs of size ~2 (measured: 3e-6).
PORT_ATOL = 3e-5


@pytest.fixture(scope="module")
def port():
    module, params = from_pretrained(FIXTURE, sha256=sha256_of_file(
        os.path.join(FIXTURE, DIFFUSERS_WEIGHTS_FILE)))  # fmt: skip
    config = read_config(FIXTURE)
    return module, params, config, np.load(os.path.join(FIXTURE, "outputs.npz"))


def test_encoder_and_decoder_match_diffusers_autoencoder_kl(port):
    module, params, config, reference = port
    assert config["scaling_factor"] == 0.18215
    mean, logvar = module.apply({"params": params}, reference["images"], method="encode")
    np.testing.assert_allclose(mean, reference["mean"], atol=PORT_ATOL)
    np.testing.assert_allclose(logvar, reference["logvar"], atol=PORT_ATOL)
    decoded = module.apply({"params": params}, reference["mean"], method="decode")
    np.testing.assert_allclose(decoded, reference["decoded"], atol=PORT_ATOL)
    # An odd side: LDM's downsampling pads only the bottom and right (15 -> 7, not 8).
    odd_mean, _ = module.apply({"params": params}, reference["odd_images"], method="encode")
    assert odd_mean.shape == reference["odd_mean"].shape == (1, 7, 7, 4)
    np.testing.assert_allclose(odd_mean, reference["odd_mean"], atol=PORT_ATOL)


def test_torch_names_of_flax_paths():
    assert (
        torch_key_of(("encoder", "down_blocks_0_downsamplers_0", "kernel"))
        == "encoder.down_blocks.0.downsamplers.0.conv.weight"
    )
    assert (
        torch_key_of(("decoder", "mid_block", "attentions_0", "to_out", "bias"))
        == "decoder.mid_block.attentions.0.to_out.0.bias"
    )
    assert torch_key_of(("quant_conv", "kernel")) == "quant_conv.weight"
    assert torch_key_of(("decoder", "up_blocks_1_resnets_2", "norm1", "scale")) == (
        "decoder.up_blocks.1.resnets.2.norm1.weight"
    )


@pytest.mark.parametrize(
    "preset, image_shape, latent_shape, num_params",
    [
        # diffusers' AutoencoderKL of SD 1.x/2.x/SDXL has 83,653,863 parameters.
        ("sd_kl_f8", (256, 256, 3), (32, 32, 4), 83_653_863),
        # SD3's: 16 latent channels and no quant convs.
        ("sd3_kl_f8", (256, 256, 3), (32, 32, 16), 83_819_683),
        ("fashion_mnist_f4", (28, 28, 1), (7, 7, 4), None),
    ],
)
def test_presets_encode_and_decode_shapes(preset, image_shape, latent_shape, num_params):
    module = AutoencoderKL(**AUTOENCODER_PRESETS[preset], image_channels=image_shape[-1])
    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    params = jax.eval_shape(lambda x: module.init(jax.random.key(0), x)["params"], x)
    if num_params is not None:
        assert sum(leaf.size for leaf in jax.tree.leaves(params)) == num_params
    mean, logvar = jax.eval_shape(
        lambda p, x: module.apply({"params": p}, x, method="encode"), params, x
    )
    assert mean.shape == logvar.shape == (2, *latent_shape)
    assert latent_side(image_shape[0], module.channel_mults) == latent_shape[0]
    decoded = jax.eval_shape(
        lambda p, z: module.apply({"params": p}, z, method="decode"), params, mean
    )
    assert decoded.shape == (2, *image_shape) and decoded.dtype == jnp.float32


def test_an_overflowing_low_precision_decode_is_redone_in_float32(port):
    module, params, _, reference = port
    # Large output weights: the decode exceeds float16's range (65504) but not float32's.
    params = jax.tree.map(jnp.asarray, params)
    params["decoder"]["conv_out"]["kernel"] = params["decoder"]["conv_out"]["kernel"] * 1e5
    half = module.clone(dtype=jnp.float16)
    latents = jnp.asarray(reference["mean"])
    direct = half.apply({"params": params}, latents, method="decode")
    assert not np.all(np.isfinite(direct))
    checked = decode_checked(half, params, latents)
    exact = module.apply({"params": params}, latents, method="decode")
    assert np.all(np.isfinite(checked))
    # The same float32 computation, compiled inside lax.cond instead of op by op: rounding
    # differences relative to the outputs' scale (~4e4 here), not to each (cancelling) value.
    np.testing.assert_allclose(checked, exact, atol=1e-5 * float(np.max(np.abs(exact))))


def test_a_file_of_another_architecture_or_checksum_is_refused(port, tmp_path):
    module, _, config, _ = port
    folder = tmp_path / "vae"
    shutil.copytree(FIXTURE, folder)
    with pytest.raises(WeightsChecksumError):
        from_pretrained(folder, sha256="0" * 64)
    # The same weights under a config with one more ResNet block per level: named tensors
    # are missing.
    bigger = dict(config, layers_per_block=2)
    (folder / "config.json").write_text(json.dumps(bigger))
    with pytest.raises(
        StateDictMismatchError, match=r"missing key\(s\): \['decoder.up_blocks.0.resnets.2"
    ):
        from_pretrained(folder)
    with pytest.raises(ValueError, match="unsupported block types"):
        (folder / "config.json").write_text(
            json.dumps(dict(config, down_block_types=["CrossAttnDownBlock2D"] * 2))
        )
        from_pretrained(folder)


def test_the_registered_network_is_the_diffusers_one(port):
    module, _, config, _ = port
    assert build_model(model_config_of(config)) == module


def test_image_sizes_and_channels_are_checked():
    check_autoencoder_input((28, 28), (1, 2, 2), 1)
    with pytest.raises(ValueError, match="positive multiple of 4; got 30"):
        check_autoencoder_input((30, 28), (1, 2, 2), 1)
    with pytest.raises(ValueError, match="set config.model.image_channels=3"):
        check_autoencoder_input((28, 28, 3), (1, 2, 2), 1)


def test_the_vq_autoencoder_quantizes_before_decoding_latents():
    from diffjax.models.autoencoder import AutoencoderVQ

    module = AutoencoderVQ(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                           latent_channels=2, image_channels=1, num_groups=4, codebook_size=5)  # fmt: skip
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1), minval=-1, maxval=1)
    params = module.init(jax.random.key(1), x)["params"]
    assert params["codebook"].shape == (5, 2) and params["quant_conv"]["kernel"].shape == (
        1,
        1,
        2,
        2,
    )
    encodings = module.apply({"params": params}, x, method="latents")
    assert encodings.shape == (2, 4, 4, 2)
    quantized, indices = module.apply({"params": params}, encodings, method="quantize")
    np.testing.assert_array_equal(quantized, params["codebook"][indices])
    np.testing.assert_array_equal(
        module.apply({"params": params}, encodings, method="decode_latents"),
        module.apply({"params": params}, quantized, method="decode"),
    )
    reconstruction, _, call_indices = module.apply({"params": params}, x)
    np.testing.assert_array_equal(call_indices, indices)
    assert reconstruction.shape == x.shape
