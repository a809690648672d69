"""LoRA files (diffjax/models/lora_weights.py): a LoRA diffjax writes in the diffusers/PEFT and
the kohya formats, loaded into diffusers by ``StableDiffusionPipeline.load_lora_weights``,
gives diffusers' UNet the outputs of diffjax's merged UNet (fixture from
benchmarks/port_reference/make_lora_fixture.py); files round-trip in both formats, DDPM's
fused q/k/v included; mismatched files are named errors."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import diffjax as dj
from diffjax.lora import flat_lora, init_lora, lora_rank, lora_scale, merge, nested_lora
from diffjax.models.lora_weights import load_lora, lora_from_state_dict, lora_state_dict, save_lora

pytestmark = pytest.mark.usefixtures("unoptimized")

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
LORA = FIXTURES / "lora"


@pytest.fixture(scope="module")
def sd_unet():
    return dj.models.from_pretrained(FIXTURES / "tiny_sd" / "unet")


@pytest.mark.parametrize("format", ["peft", "kohya"])
def test_diffusers_loads_diffjax_loras_to_the_same_outputs(sd_unet, format):
    """float32 through a 2-level UNet: diffjax and diffusers agree to 2e-6 here; 1e-4 leaves
    room for other CPUs' convolution kernels and is far below a wrong factor's effect (the
    LoRA moves the outputs by 0.6)."""
    module, params = sd_unet
    lora, alpha = load_lora(LORA / f"sd_{format}.safetensors", module, params)
    # to_q, to_k, to_v, to_out of both attentions of the 11 transformer blocks.
    assert alpha == 4.0 and lora_rank(lora) == 2 and len(flat_lora(lora)) == 88
    inputs = np.load(FIXTURES / "tiny_sd" / "outputs.npz")
    merged = merge(params, lora, lora_scale(alpha, lora_rank(lora)))
    outputs = module.apply({"params": merged}, jnp.asarray(inputs["x"]), jnp.asarray(inputs["t"]),
                           {"context": jnp.asarray(inputs["context"])})  # fmt: skip
    reference = np.load(LORA / "outputs.npz")[format]
    assert np.abs(reference - inputs["unet"]).max() > 0.1  # the LoRA matters
    np.testing.assert_allclose(outputs, reference, rtol=0, atol=1e-4)


@pytest.mark.parametrize("format", ["peft", "kohya"])
@pytest.mark.parametrize("folder", ["tiny_sd/unet", "ddpm_unet"])
def test_files_round_trip_exactly(folder, format, tmp_path):
    module, params = dj.models.from_pretrained(FIXTURES / folder)
    lora = flat_lora(init_lora(jax.random.key(0), params, 2))
    lora = {path: dict(pair, up=pair["up"] + 0.1 * (i + 1)) for i, (path, pair) in
            enumerate(sorted(lora.items()))}  # fmt: skip
    path = tmp_path / "lora.safetensors"
    save_lora(path, nested_lora(lora), module, params, alpha=3.0, format=format)
    back, alpha = load_lora(path, module, params)
    back = flat_lora(back)
    assert alpha == 3.0 and sorted(back) == sorted(lora)
    for name in lora:
        np.testing.assert_array_equal(back[name]["down"], lora[name]["down"])
        np.testing.assert_array_equal(back[name]["up"], lora[name]["up"])


def test_the_names_are_diffusers_and_kohyas(sd_unet):
    module, params = sd_unet
    lora = init_lora(jax.random.key(0), params, 2)
    peft = lora_state_dict(lora, module, params, alpha=2.0)
    kohya = lora_state_dict(lora, module, params, alpha=2.0, format="kohya")
    module_name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert peft[f"unet.{module_name}.lora_A.weight"].shape == (2, 8)
    assert peft[f"unet.{module_name}.lora_B.weight"].shape == (8, 2)
    kohya_name = "lora_unet_" + module_name.replace(".", "_")
    assert kohya[f"{kohya_name}.lora_down.weight"].shape == (2, 8)
    assert float(kohya[f"{kohya_name}.alpha"]) == 2.0


def test_a_peft_file_without_metadata_has_alpha_equal_to_the_rank(sd_unet, tmp_path):
    module, params = sd_unet
    state = load_file(LORA / "sd_peft.safetensors")
    save_file(state, tmp_path / "bare.safetensors")
    _, alpha = load_lora(tmp_path / "bare.safetensors", module, params)
    assert alpha == 2.0
    metadata = json.loads(
        __import__("safetensors")
        .safe_open(str(LORA / "sd_peft.safetensors"), "numpy")
        .metadata()["lora_adapter_metadata"]
    )
    assert metadata["unet.r"] == 2 and metadata["unet.lora_alpha"] == 4.0


def test_mismatched_files_are_named_errors(sd_unet):
    module, params = sd_unet
    state = load_file(LORA / "sd_peft.safetensors")
    extra = dict(state, **{"unet.no_such.lora_A.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="match no kernel of this network"):
        lora_from_state_dict(extra, module, params)
    half = {key: value for key, value in state.items() if "attn1.to_q.lora_B" not in key}
    with pytest.raises(ValueError, match="has one of its two factors only"):
        lora_from_state_dict(half, module, params)
    ddpm, ddpm_params = dj.models.from_pretrained(FIXTURES / "ddpm_unet")
    split = lora_state_dict(init_lora(jax.random.key(0), ddpm_params, 2), ddpm, ddpm_params,
                            alpha=2.0)  # fmt: skip
    key = next(key for key in split if key.endswith("to_k.lora_A.weight"))
    split[key] = split[key] + 1.0
    with pytest.raises(ValueError, match="must share their down factor"):
        lora_from_state_dict(split, ddpm, ddpm_params)
