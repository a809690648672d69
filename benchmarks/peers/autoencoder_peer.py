"""diffusers' AutoencoderKL at the Fashion-MNIST autoencoder's size: encode and decode images/s.

Runs in the PyTorch peer venv (benchmarks/setup_peers.sh); benchmarks/bench_autoencoder.py
starts it and prints its JSON line beside diffjax's numbers.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from diffusers import AutoencoderKL


def main(batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = AutoencoderKL(
        in_channels=1, out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
    ).eval()  # fmt: skip
    images = torch.rand(batch, 1, 28, 28) * 2 - 1
    result = dict(
        params=sum(p.numel() for p in model.parameters()), threads=torch.get_num_threads()
    )
    with torch.no_grad():
        for name, run in (
            ("encode", lambda: model.encode(images).latent_dist.mean),
            ("decode", lambda: model.decode(torch.zeros(batch, 4, 7, 7)).sample),
        ):
            run()  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            result[f"{name}_images_per_s"] = batch * repeats / (time.perf_counter() - start)
    print(json.dumps(result))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
