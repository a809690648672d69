"""Writes the ControlNet port fixtures: tiny diffusers ``ControlNetModel`` folders with random
weights, and their residuals.

Run in the PyTorch peer venv (benchmarks/setup_peers.sh):

    /work/peers/bin/python benchmarks/port_reference/make_controlnet_fixture.py

It writes, under tests/fixtures/controlnet/:

- ``sd1/``: an SD-1-shaped ControlNet (cross-attention at the first level, 1x1-convolution
  projections, 8 "heads" in diffusers' sense, one layer per block) whose condition encoder has
  four widths, so three stride-2 steps: the control image is 8 times the latent's size, as a
  512x512 image is for 64x64 latents.
- ``sd2/``: an SD-2-shaped one (linear projections, heads given per block, two transformer blocks,
  cross-attention at the second level only, two layers per block, another time embedding
  convention), a one-channel control image at twice the latent's size (one stride-2 step).
- ``published_shapes.json``: every tensor name and shape of the full-size SD 1.5 and SD 2.1
  ControlNets (``lllyasviel/sd-controlnet-*``, ``thibaud/controlnet-sd21-*``), built without
  memory (``init_empty_weights``), with their ``config.json`` values.

Each folder is ``ControlNetModel.save_pretrained`` (``config.json`` and
``diffusion_pytorch_model.safetensors``) plus ``outputs.npz`` with, all float32:

- ``x``: the noisy latents, NHWC ``[B, H, W, C]`` (diffusers is given them NCHW);
- ``t``: the timesteps ``[B]``;
- ``context``: the encoder hidden states ``[B, L, cross_attention_dim]``;
- ``control``: the control image in [0, 1], NHWC ``[B, H_c, W_c, C_c]``;
- ``down_0`` ... ``down_{n-1}``: diffusers' ``down_block_res_samples`` in order, NHWC;
- ``mid``: its ``mid_block_res_sample``, NHWC;

at ``conditioning_scale`` 1.0 (guess mode off). Every parameter, the zero convolutions
included, is drawn at random so that a swapped or transposed tensor cannot hide behind an
initial value of 0 or 1.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel
from make_stable_diffusion_fixture import nchw, nhwc, randomise  # the same random weights

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "controlnet")

SD1_CONTROLNET = dict(
    in_channels=4,
    conditioning_channels=3,
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
    conditioning_embedding_out_channels=(8, 16, 16, 32),
)
SD2_CONTROLNET = dict(
    in_channels=4,
    conditioning_channels=1,
    block_out_channels=(8, 16),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    cross_attention_dim=12,
    attention_head_dim=(1, 2),
    use_linear_projection=True,
    transformer_layers_per_block=2,
    norm_num_groups=4,
    norm_eps=1e-6,
    flip_sin_to_cos=False,
    freq_shift=1,
    conditioning_embedding_out_channels=(16, 32),
)
# (latent size, strides of the condition encoder, batch, context length, seed)
INPUTS = {"sd1": ((4, 6), 3, 2, 5, 0), "sd2": ((6, 4), 1, 2, 3, 1)}
PUBLISHED = {  # the published config.json values of the full-size ControlNets
    "sd15_controlnet": dict(
        in_channels=4, conditioning_channels=3, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        conditioning_embedding_out_channels=(16, 32, 96, 256),
    ),
    "sd21_controlnet": dict(
        in_channels=4, conditioning_channels=3, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        conditioning_embedding_out_channels=(16, 32, 96, 256),
    ),
}  # fmt: skip


def write_variant(name: str, config: dict, out: str) -> None:
    (height, width), strides, batch, length, seed = INPUTS[name]
    assert strides == len(config["conditioning_embedding_out_channels"]) - 1  # diffusers' rule
    torch.manual_seed(seed)
    model = randomise(ControlNetModel(**config))
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, height, width, config["in_channels"])).astype(np.float32)
    t = np.array([981.0, 3.0][:batch], np.float32)
    context = rng.standard_normal((batch, length, config["cross_attention_dim"]))
    context = context.astype(np.float32)
    side = 2**strides
    control_shape = (batch, height * side, width * side, config["conditioning_channels"])
    control = rng.uniform(0.0, 1.0, control_shape).astype(np.float32)
    with torch.no_grad():
        down, mid = model(
            nchw(x), torch.from_numpy(t), torch.from_numpy(context), nchw(control),
            conditioning_scale=1.0, return_dict=False,
        )  # fmt: skip
    residuals = {f"down_{index}": nhwc(sample) for index, sample in enumerate(down)}
    np.savez_compressed(
        os.path.join(out, "outputs.npz"), x=x, t=t, context=context, control=control,
        mid=nhwc(mid), **residuals,
    )  # fmt: skip


def published_config(model: torch.nn.Module) -> dict:
    """The model's config.json values (without diffusers' unordered bookkeeping set)."""
    config = {k: v for k, v in model.config.items() if k != "_use_default_values"}
    return dict(config, _class_name=type(model).__name__)


def published_shapes(path: str) -> None:
    shapes = {}
    with init_empty_weights():
        for name, config in PUBLISHED.items():
            model = ControlNetModel(**config)
            shapes[name] = dict(
                config=json.loads(json.dumps(published_config(model), default=list)),
                shapes={key: list(value.shape) for key, value in model.state_dict().items()},
            )
    with open(path, "w") as file:
        json.dump(shapes, file, separators=(",", ":"))


def main() -> None:
    import diffusers

    os.makedirs(FIXTURES, exist_ok=True)
    write_variant("sd1", SD1_CONTROLNET, os.path.join(FIXTURES, "sd1"))
    write_variant("sd2", SD2_CONTROLNET, os.path.join(FIXTURES, "sd2"))
    published_shapes(os.path.join(FIXTURES, "published_shapes.json"))
    with open(os.path.join(FIXTURES, "versions.json"), "w") as file:
        json.dump(dict(diffusers=diffusers.__version__, torch=torch.__version__), file)
    print("wrote the ControlNet fixtures")


if __name__ == "__main__":
    main()
