"""Writes the Stable Diffusion port fixtures: tiny diffusers models with random weights in the
published file formats, and their outputs.

Run in the PyTorch peer venv (benchmarks/setup_peers.sh) after make_clip_fixture.py (this
script reuses its tokenizer):

    /work/peers/bin/python benchmarks/port_reference/make_stable_diffusion_fixture.py

It writes, under tests/fixtures/:

- ``tiny_sd/``: a ``StableDiffusionPipeline`` folder (``save_pretrained``) at an SD-1-shaped
  small config: CLIP text encoder and tokenizer, a ``UNet2DConditionModel`` with
  cross-attention and plain down/up blocks, 1x1-convolution projections and 2 layers per
  block, a two-level ``AutoencoderKL``, SD's ``DDIMScheduler`` config; ``outputs.npz`` holds
  the UNet's output for given (x, t, context) and the whole pipeline's images for two prompts
  (a negative prompt, classifier-free guidance 7.5, 4 DDIM steps, given initial latents).
- ``tiny_sd_single_file.safetensors``: the same three networks in the original single-file
  layout (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``),
  checked here to convert back to the diffusers state dicts exactly with diffusers' own
  ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
  ``convert_ldm_clip_checkpoint``.
- ``unet_sd2/``: an SD-2-shaped ``UNet2DConditionModel`` (linear projections, heads per block
  of one width, 2 transformer blocks per attention) and its output.
- ``ddpm_unet/``: a DDPM-shaped ``UNet2DModel`` (self-attention at one level, DDPM's
  timestep embedding and padding, ``attention_head_dim`` None) with ``scheduler_config.json``
  (DDPM's linear betas) in ``google/ddpm-cifar10-32``'s folder layout, its output and a
  10-step DDIM sample from given noise (x0 clipped to [-1, 1], the step taken with the eps of
  the clipped x0, as diffjax's ``clip_x0`` does).
- ``published_shapes.json``: every tensor name and shape of the full-size SD 1.5 and SD 2.1
  UNets, the SDXL and SD 3 autoencoders, built without memory (``init_empty_weights``), from
  their published ``config.json`` values written out below.

Every parameter, norm scales and biases included, is drawn at random so that a swapped or
transposed tensor cannot hide behind an initial value of 0 or 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from make_autoencoder_fixture import CONFIG as VAE  # the same tiny AutoencoderKL
from safetensors.numpy import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
TOKENIZER = os.path.join(FIXTURES, "clip_text", "tokenizer")

SD_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16, 16),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=2,
    norm_num_groups=4,
)
SD2_UNET = dict(
    SD_UNET,
    layers_per_block=1,
    attention_head_dim=(1, 2, 2),
    use_linear_projection=True,
    transformer_layers_per_block=2,
    cross_attention_dim=12,
)
DDPM_UNET = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    norm_eps=1e-6,
    freq_shift=1,
    flip_sin_to_cos=False,
    downsample_padding=0,
    attention_head_dim=None,
)
SD_SCHEDULER = dict(  # Stable Diffusion 1.5's scheduler_config.json values
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
PUBLISHED = {  # the published config.json values of the full-size models
    "sd15_unet": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    "sd21_unet": dict(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    "sdxl_vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), sample_size=1024, scaling_factor=0.13025,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ),
    "sd3_vae": dict(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), sample_size=1024, scaling_factor=1.5305,
        shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ),
}  # fmt: skip


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Draws every parameter at random (norm scales around 1)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.2 if parameter.ndim == 1 else 1.0 / np.sqrt(parameter[0].numel())
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            parameter.copy_(torch.randn_like(parameter) * scale + offset)
    return model.eval()


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(0, 2, 3, 1).numpy()


def nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def state_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}


_RESNET_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}  # fmt: skip


def unet_to_ldm(state: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """diffusers UNet names -> the original LDM names (the inverse of diffusers' converter)."""
    per_level = config["layers_per_block"] + 1
    attention_up = ["CrossAttn" in block for block in config["up_block_types"]]

    def rename(key: str) -> str:
        resnet = lambda m: _RESNET_TO_LDM[m]  # noqa: E731
        key = re.sub(
            r"time_embedding\.linear_(\d)", lambda m: f"time_embed.{2 * int(m[1]) - 2}", key
        )
        key = key.replace("conv_in.", "input_blocks.0.0.").replace("conv_norm_out.", "out.0.")
        key = key.replace("conv_out.", "out.2.")
        m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(\w+)(.*)", key)
        if m:
            index = 1 + int(m[1]) * per_level + int(m[3])
            if m[2] == "resnets":
                return f"input_blocks.{index}.0.{resnet(m[4])}{m[5]}"
            return f"input_blocks.{index}.1.{m[4]}{m[5]}"
        m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", key)
        if m:
            return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op{m[2]}"
        m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(\w+)(.*)", key)
        if m:
            if m[1] == "resnets":
                return f"middle_block.{2 * int(m[2])}.{resnet(m[3])}{m[4]}"
            return f"middle_block.1.{m[3]}{m[4]}"
        m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(\w+)(.*)", key)
        if m:
            index = int(m[1]) * per_level + int(m[3])
            if m[2] == "resnets":
                return f"output_blocks.{index}.0.{resnet(m[4])}{m[5]}"
            return f"output_blocks.{index}.1.{m[4]}{m[5]}"
        m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)", key)
        if m:
            index = int(m[1]) * per_level + per_level - 1
            return f"output_blocks.{index}.{2 if attention_up[int(m[1])] else 1}.conv{m[2]}"
        return key

    return {rename(key): value for key, value in state.items()}


def vae_to_ldm(state: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """diffusers AutoencoderKL names -> the original LDM names (q/k/v/proj_out as 1x1 convs)."""
    levels = len(config["block_out_channels"])
    attention = {
        "group_norm": "norm",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "proj_out",
    }
    ldm = {}
    for key, value in state.items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(
            r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new
        )
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", new)  # fmt: skip
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", new)  # fmt: skip
        new = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        m = re.match(
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(\w+)",
            new,
        )
        if m:
            new = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
            if value.ndim == 2 and m[2] != "group_norm":
                value = value[:, :, None, None]
        ldm[new] = value
    return ldm


def published_text_state(text_encoder: torch.nn.Module) -> dict[str, np.ndarray]:
    """The text encoder's tensors under the published ``text_model.`` names."""
    return {
        key if key.startswith("text_model.") else f"text_model.{key}": value
        for key, value in state_of(text_encoder).items()
    }


def assert_same(converted: dict, expected: dict, what: str) -> None:
    assert set(converted) == set(expected), (what, set(converted) ^ set(expected))
    for key, value in expected.items():
        got = np.asarray(converted[key])
        assert got.shape == value.shape and np.array_equal(got, value), (what, key)


def write_single_file(unet, vae, text_encoder, path: str) -> None:
    unet_state, vae_state = state_of(unet), state_of(vae)
    text_state = published_text_state(text_encoder)
    checkpoint = {
        f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(unet_state, SD_UNET).items()
    }
    checkpoint |= {f"first_stage_model.{k}": v for k, v in vae_to_ldm(vae_state, VAE).items()}
    checkpoint |= {f"cond_stage_model.transformer.{k}": v for k, v in text_state.items()}
    torch_checkpoint = {k: torch.from_numpy(v) for k, v in checkpoint.items()}
    assert_same(convert_ldm_unet_checkpoint(torch_checkpoint, dict(SD_UNET)), unet_state, "unet")
    assert_same(convert_ldm_vae_checkpoint(torch_checkpoint, dict(VAE)), vae_state, "vae")
    clip = convert_ldm_clip_checkpoint(torch_checkpoint)
    text_state = {k: v for k, v in text_state.items() if "position_ids" not in k}
    assert_same({k: v for k, v in clip.items() if "position_ids" not in k}, text_state, "clip")
    save_file({k: np.ascontiguousarray(v) for k, v in checkpoint.items()}, path)


def tiny_sd(out: str) -> None:
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    text_config = CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    text_encoder = randomise(CLIPTextModel(text_config))
    unet = randomise(UNet2DConditionModel(**SD_UNET))
    vae = randomise(AutoencoderKL(**VAE))
    scheduler = DDIMScheduler(**SD_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # The published SD folders hold vocab.json and merges.txt (transformers 5 writes only
    # tokenizer.json): keep that layout.
    shutil.rmtree(os.path.join(out, "tokenizer"))
    shutil.copytree(TOKENIZER, os.path.join(out, "tokenizer"))
    # ... and their text encoders' tensors under text_model. (transformers >= 5 drops it).
    save_file(
        published_text_state(text_encoder), os.path.join(out, "text_encoder", "model.safetensors")
    )

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    t = np.array([981.0, 3.0], np.float32)
    context = rng.standard_normal((2, 5, 16)).astype(np.float32)
    latents = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    prompts = ["a photograph of an astronaut riding a horse", "Cats, dogs & 3 birds!"]
    with torch.no_grad():
        unet_out = unet(nchw(x), torch.from_numpy(t), torch.from_numpy(context)).sample
        images = pipe(
            prompts, negative_prompt=["blurry", ""], num_inference_steps=4, guidance_scale=7.5,
            latents=nchw(latents), height=16, width=16, output_type="np",
        ).images  # fmt: skip
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids  # fmt: skip
        embeddings = text_encoder(ids).last_hidden_state
    np.savez_compressed(
        os.path.join(out, "outputs.npz"), x=x, t=t, context=context, unet=nhwc(unet_out),
        latents=latents, images=images, prompt_embeddings=embeddings.numpy(),
    )  # fmt: skip
    write_single_file(
        unet, vae, text_encoder, os.path.join(FIXTURES, "tiny_sd_single_file.safetensors")
    )


def unet_sd2(out: str) -> None:
    torch.manual_seed(1)
    unet = randomise(UNet2DConditionModel(**SD2_UNET))
    shutil.rmtree(out, ignore_errors=True)
    unet.save_pretrained(out, safe_serialization=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 16, 4)).astype(np.float32)
    t = np.array([500.0, 17.0], np.float32)
    context = rng.standard_normal((2, 3, 12)).astype(np.float32)
    with torch.no_grad():
        output = unet(nchw(x), torch.from_numpy(t), torch.from_numpy(context)).sample
    np.savez_compressed(
        os.path.join(out, "outputs.npz"), x=x, t=t, context=context, unet=nhwc(output)
    )


def ddpm_unet(out: str) -> None:
    torch.manual_seed(2)
    unet = randomise(UNet2DModel(**DDPM_UNET))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                              beta_end=0.02)  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    unet.save_pretrained(out, safe_serialization=True)
    scheduler.save_pretrained(out)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    t = np.array([999, 0], np.int64)
    noise = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(10)
    with torch.no_grad():
        output = unet(nchw(x), torch.from_numpy(t)).sample
        sample = nchw(noise)
        for timestep in ddim.timesteps:
            eps = unet(sample, timestep).sample
            # diffjax's clip_x0 steps with the eps of the clipped x0 (DDIMPipeline's default,
            # use_clipped_model_output=False, keeps the network's eps beside the clipped x0).
            sample = ddim.step(
                eps, timestep, sample, eta=0.0, use_clipped_model_output=True
            ).prev_sample
    np.savez_compressed(
        os.path.join(out, "outputs.npz"), x=x, t=t, unet=nhwc(output), noise=noise,
        ddim_timesteps=ddim.timesteps.numpy(), ddim_sample=nhwc(sample),
    )  # fmt: skip


def published_config(model: torch.nn.Module) -> dict:
    """The model's config.json values (without diffusers' unordered bookkeeping set)."""
    config = {k: v for k, v in model.config.items() if k != "_use_default_values"}
    return dict(config, _class_name=type(model).__name__)


def published_shapes(path: str) -> None:
    shapes = {}
    with init_empty_weights():
        for name, config in PUBLISHED.items():
            model = (UNet2DConditionModel if name.endswith("unet") else AutoencoderKL)(**config)
            shapes[name] = dict(
                config=json.loads(json.dumps(published_config(model), default=list)),
                shapes={key: list(value.shape) for key, value in model.state_dict().items()},
            )
            # The same tensors under the original single-file names, checked against
            # diffusers' converter on meta tensors.
            state = model.state_dict()
            to_ldm = unet_to_ldm if name.endswith("unet") else vae_to_ldm
            ldm = to_ldm(state, dict(model.config))
            convert = (
                convert_ldm_unet_checkpoint if name.endswith("unet") else convert_ldm_vae_checkpoint
            )
            prefix = "model.diffusion_model." if name.endswith("unet") else "first_stage_model."
            back = convert({prefix + k: v for k, v in ldm.items()}, dict(model.config))
            assert {k: tuple(v.shape) for k, v in back.items()} == {
                k: tuple(v.shape) for k, v in state.items()
            }, name
            shapes[name]["single_file_shapes"] = {key: list(v.shape) for key, v in ldm.items()}
    with open(path, "w") as file:
        json.dump(shapes, file, separators=(",", ":"))


def main() -> None:
    import diffusers
    import transformers

    tiny_sd(os.path.join(FIXTURES, "tiny_sd"))
    unet_sd2(os.path.join(FIXTURES, "unet_sd2"))
    ddpm_unet(os.path.join(FIXTURES, "ddpm_unet"))
    published_shapes(os.path.join(FIXTURES, "published_shapes.json"))
    with open(os.path.join(FIXTURES, "tiny_sd", "versions.json"), "w") as file:
        json.dump(dict(diffusers=diffusers.__version__, transformers=transformers.__version__,
                       torch=torch.__version__), file)  # fmt: skip
    print("wrote the Stable Diffusion fixtures")


if __name__ == "__main__":
    main()
