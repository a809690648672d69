"""Writes tests/fixtures/mmdit/: a tiny diffusers ``SD3Transformer2DModel`` (Stable Diffusion
3's MMDiT) with random weights in its published file format, and its output on fixed inputs.

Run in the PyTorch peer venv (benchmarks/setup_peers.sh):

    /work/peers/bin/python benchmarks/port_reference/make_mmdit_fixture.py

The config exercises every block type: three blocks (the last ``context_pre_only``), QK
RMSNorm, SD3.5's dual attention in block 0, a position grid (8 x 8 patches, trained on 3 x 3)
larger than the non-square input's 4 x 6 so that the positions are cropped, and
``out_channels`` other than ``in_channels``. Every parameter is drawn at random (the adaLN-Zero
modulations and the output layer included, which diffjax initialises at zero; the RMSNorm
scales around 1). The timesteps are SD3's ``1000 sigma``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from diffusers import SD3Transformer2DModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "mmdit")
CONFIG = dict(
    sample_size=6, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
    num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
    pooled_projection_dim=10, out_channels=8, pos_embed_max_size=8, dual_attention_layers=(0,),
    qk_norm="rms_norm",
)  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    model = SD3Transformer2DModel(**CONFIG).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.2 if parameter.ndim == 1 else 1.0 / np.sqrt(parameter[0].numel())
            offset = 1.0 if ".norm_" in name else 0.0  # RMSNorm scales
            parameter.copy_(offset + torch.randn_like(parameter) * scale)
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12, 4)).astype(np.float32)
    t = np.array([999.0, 3.5], np.float32)
    context = rng.standard_normal((2, 5, 12)).astype(np.float32)
    pooled = rng.standard_normal((2, 10)).astype(np.float32)
    with torch.no_grad():
        out = model(
            torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(context),
            torch.from_numpy(pooled), torch.from_numpy(t),
        ).sample  # fmt: skip
    np.savez_compressed(os.path.join(OUT, "outputs.npz"), x=x, t=t, context=context,
                        pooled=pooled, out=out.permute(0, 2, 3, 1).numpy())  # fmt: skip
    import diffusers

    with open(os.path.join(OUT, "versions.json"), "w") as file:
        json.dump(dict(diffusers=diffusers.__version__, torch=torch.__version__), file)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
