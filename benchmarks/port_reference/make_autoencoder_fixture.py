"""Writes tests/fixtures/autoencoder_kl/: a tiny diffusers ``AutoencoderKL`` with random
weights in its published file format, and its outputs on fixed inputs.

Run in the PyTorch peer venv (benchmarks/setup_peers.sh):

    /work/peers/bin/python benchmarks/port_reference/make_autoencoder_fixture.py

tests/test_autoencoder.py loads ``diffusion_pytorch_model.safetensors`` with diffjax's key table
(no torch) and compares diffjax's encoder moments and decoder output with the ones stored here.
Every parameter, GroupNorm scales and biases included, is drawn at random so that a swapped or
transposed tensor cannot hide behind an initial value of 0 or 1.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from diffusers import AutoencoderKL

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "autoencoder_kl")
CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)


def main() -> None:
    torch.manual_seed(0)
    model = AutoencoderKL(**CONFIG).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.2 if parameter.ndim == 1 else (1.0 / np.sqrt(parameter[0].numel()))
            parameter.copy_(
                torch.randn_like(parameter) * scale
                + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            )
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    odd = rng.uniform(-1, 1, (1, 15, 15, 3)).astype(np.float32)
    with torch.no_grad():
        posterior = model.encode(torch.from_numpy(images).permute(0, 3, 1, 2)).latent_dist
        decoded = model.decode(posterior.mean).sample
        odd_mean = model.encode(torch.from_numpy(odd).permute(0, 3, 1, 2)).latent_dist.mean
    nhwc = lambda tensor: tensor.permute(0, 2, 3, 1).numpy()  # noqa: E731
    np.savez_compressed(
        os.path.join(OUT, "outputs.npz"),
        images=images,
        mean=nhwc(posterior.mean),
        logvar=nhwc(posterior.logvar),
        decoded=nhwc(decoded),
        odd_images=odd,
        odd_mean=nhwc(odd_mean),
    )
    with open(os.path.join(OUT, "versions.json"), "w") as file:
        import diffusers

        json.dump(dict(diffusers=diffusers.__version__, torch=torch.__version__), file)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
