"""diffusers' StableDiffusionPipeline at a small SD-shaped config with random weights: writes
the pipeline folder diffjax then loads, and times the pipeline on given latents.

Runs in the PyTorch peer venv (benchmarks/setup_peers.sh); benchmarks/bench_text_to_image.py
starts it, loads the folder it wrote into diffjax, and compares the images it saved.

Usage: text_to_image_peer.py FOLDER TOKENIZER_FOLDER STEPS BATCH SIDE
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# SD 1.5's layout (4 levels, 2 ResNets per level, cross-attention at the top 3 levels, 8
# heads, a 4-level autoencoder, SD's DDIM scheduler config), narrow.
UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(64, 128, 256, 256),
    cross_attention_dim=256,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64, 128, 128),
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)  # fmt: skip
PROMPTS = ["a photograph of an astronaut riding a horse", "a red fox in the snow, oil painting"]


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.2 if parameter.ndim == 1 else 1.0 / np.sqrt(parameter[0].numel())
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            parameter.copy_(torch.randn_like(parameter) * scale + offset)
    return model.eval()


def main(folder: str, tokenizer_folder: str, steps: int, batch: int, side: int) -> None:
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    text_encoder = randomise(CLIPTextModel(CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=256, intermediate_size=1024,
        num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77,
        hidden_act="quick_gelu", eos_token_id=tokenizer.eos_token_id,
    )))  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=randomise(AutoencoderKL(**VAE)), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=randomise(UNet2DConditionModel(**UNET)), scheduler=DDIMScheduler(**SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    # The published layout: vocab.json / merges.txt, and text_model.-prefixed tensors.
    for name in os.listdir(tokenizer_folder):
        with open(os.path.join(tokenizer_folder, name), "rb") as source:
            with open(os.path.join(folder, "tokenizer", name), "wb") as target:
                target.write(source.read())
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v.contiguous()
             for k, v in text_encoder.state_dict().items()}  # fmt: skip
    save_file(state, os.path.join(folder, "text_encoder", "model.safetensors"))
    prompts = (PROMPTS * batch)[:batch]
    latents = np.random.default_rng(0).standard_normal((batch, 4, side // 8, side // 8))
    latents = latents.astype(np.float32)

    def run() -> np.ndarray:
        with torch.no_grad():
            return pipe(
                prompts, num_inference_steps=steps, guidance_scale=7.5, height=side,
                width=side, latents=torch.from_numpy(latents), output_type="np",
            ).images  # fmt: skip

    run()  # warm-up
    start = time.perf_counter()
    images = run()
    seconds = time.perf_counter() - start
    np.savez(os.path.join(folder, "peer_outputs.npz"), images=images,
             latents=latents.transpose(0, 2, 3, 1), prompts=np.asarray(prompts))  # fmt: skip
    print(json.dumps(dict(
        seconds_per_image=seconds / batch, threads=torch.get_num_threads(),
        unet_params=sum(p.numel() for p in pipe.unet.parameters()),
    )))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(arg) for arg in sys.argv[3:]))
