"""Writes tests/fixtures/dit/: a tiny diffusers ``DiTTransformer2DModel`` (facebookresearch's
DiT as diffusers publishes it) with random weights in its published file format, and its
output on fixed inputs.

Run in the PyTorch peer venv (benchmarks/setup_peers.sh):

    /work/peers/bin/python benchmarks/port_reference/make_dit_fixture.py

Every parameter is drawn at random (the adaLN-Zero modulations and the output layer included,
which DiT initialises at zero), and the per-block copies of the timestep and label embedders
that diffusers' conversion writes are set equal, as in a converted checkpoint.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from diffusers import DiTTransformer2DModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "dit")
CONFIG = dict(
    num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
    sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-5,
)  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(**CONFIG).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.2 if parameter.ndim == 1 else 1.0 / np.sqrt(parameter[0].numel())
            parameter.copy_(torch.randn_like(parameter) * scale)
        first = model.transformer_blocks[0].norm1.emb
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first.state_dict())
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    t = np.array([999, 3], np.int64)
    labels = np.array([7, 10], np.int64)  # 10: the null class
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t),
                    torch.from_numpy(labels)).sample  # fmt: skip
    np.savez_compressed(os.path.join(OUT, "outputs.npz"), x=x, t=t, labels=labels,
                        out=out.permute(0, 2, 3, 1).numpy())  # fmt: skip
    import diffusers

    with open(os.path.join(OUT, "versions.json"), "w") as file:
        json.dump(dict(diffusers=diffusers.__version__, torch=torch.__version__), file)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
