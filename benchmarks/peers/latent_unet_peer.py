"""diffusers' UNet2DConditionModel training step at the latent UNet benchmark's size.

Runs in the PyTorch peer venv; benchmarks/bench_latent_unet.py starts it and prints its JSON
line beside diffjax's. The step is diffjax's: eps-prediction MSE on the linear schedule's
q_sample, backward, gradient clipping at 1, Adam.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from diffusers import UNet2DConditionModel


def main(batch: int, steps: int, side: int, tokens: int, context_dim: int) -> None:
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=side, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(64, 128), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=context_dim,
        attention_head_dim=8, norm_num_groups=32,
    ).train()  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    betas = torch.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    x0 = torch.rand(batch, 4, side, side) * 2 - 1
    context = torch.randn(batch, tokens, context_dim)

    def step() -> None:
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].sqrt()[:, None, None, None]
        s = (1 - alphas_cumprod[t]).sqrt()[:, None, None, None]
        prediction = model(a * x0 + s * noise, t, encoder_hidden_states=context).sample
        loss = torch.mean((prediction - noise) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps(dict(
        params=sum(p.numel() for p in model.parameters()), threads=torch.get_num_threads(),
        images_per_s=batch * steps / seconds, ms_per_step=1000 * seconds / steps,
    )))  # fmt: skip


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:6]))
