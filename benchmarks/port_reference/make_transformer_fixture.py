"""Writes tests/fixtures/spatial_transformer/: a small diffusers ``Transformer2DModel`` (SD's
spatial transformer) with random weights in safetensors, and its outputs on fixed inputs, once
with 1x1-convolution projections (SD 1) and once with linear ones (SD 2).

Run in the PyTorch peer venv (benchmarks/setup_peers.sh):

    /work/peers/bin/python benchmarks/port_reference/make_transformer_fixture.py

tests/test_transformer.py loads the weights by diffjax's diffusers key table (no torch) and
compares diffjax's SpatialTransformer with the outputs stored here. Every parameter, norms
included, is drawn at random.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from safetensors.torch import save_file

OUT = os.path.join(
    os.path.dirname(__file__), "..", "..", "tests", "fixtures", "spatial_transformer"
)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 4, 4)).astype(np.float32)
    context = rng.normal(size=(2, 5, 12)).astype(np.float32)
    arrays = dict(x=x.transpose(0, 2, 3, 1), context=context)
    for linear in (False, True):
        torch.manual_seed(0)
        model = Transformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=16, num_layers=2,
            norm_num_groups=4, cross_attention_dim=12, use_linear_projection=linear,
        ).eval()  # fmt: skip
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                scale = 0.2 if parameter.ndim == 1 else 1.0 / np.sqrt(parameter[0].numel())
                offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                parameter.copy_(torch.randn_like(parameter) * scale + offset)
            out = model(torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(context)).sample
        tag = "linear" if linear else "conv"
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            os.path.join(OUT, f"{tag}.safetensors"),
        )
        arrays[f"out_{tag}"] = out.numpy().transpose(0, 2, 3, 1)
    np.savez_compressed(os.path.join(OUT, "outputs.npz"), **arrays)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
