"""Writes tests/fixtures/dit_checkpoint/: a tiny DiT in facebookresearch's published ``.pt``
format (``DiT-XL-2-256x256.pt`` is ``torch.save`` of the EMA model's plain state dict), the
same weights as a diffusers ``DiTTransformer2DModel`` folder, and both networks' outputs on
fixed inputs (NHWC).

Run in the PyTorch peer venv (benchmarks/setup_peers.sh):

    /work/peers/bin/python benchmarks/port_reference/make_dit_checkpoint_fixture.py

A random-weight diffusers model (every parameter drawn, the adaLN-Zero layers included; the
per-block embedder copies equal, as diffusers' conversion writes them) is converted to
facebookresearch's names by inverting diffusers' ``scripts/convert_dit_to_diffusers.py``: q, k
and v fused into ``attn.qkv``, ``pos_embed`` the fixed MAE sin-cos buffer ``[1, N, D]``.

The state dict is then run through :func:`facebookresearch_forward`, a re-implementation of
facebookresearch/DiT's ``models.py`` (commit ed81ce2, timm's ``Attention`` and ``Mlp``). With
diffusers' timestep sinusoid (frequencies ``10000^(-k / (half - 1))``) it must reproduce the
diffusers model, which checks the conversion; with facebookresearch's own (``10000^(-k /
half)``) it gives ``out_facebookresearch``, which differs (the difference is printed and kept
in the fixture).
"""

from __future__ import annotations

import json
import math
import os

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from make_stable_diffusion_fixture import nchw, nhwc

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "dit_checkpoint")
CONFIG = dict(
    num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
    sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6,
)  # fmt: skip
FACEBOOKRESEARCH_COMMIT = "ed81ce2229091fd4ecc9a223645f95cf379d582b"
_EMBEDDERS = "transformer_blocks.0.norm1.emb."


def mae_positions(dim: int, grid: int) -> np.ndarray:
    """facebookresearch's ``get_2d_sincos_pos_embed`` (MAE's): ``[grid * grid, dim]`` float64,
    the first half of the channels the column's ``[sin, cos]``, the second half the row's."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    columns, rows = np.meshgrid(
        np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    )

    def one_axis(positions: np.ndarray) -> np.ndarray:
        angles = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(columns), one_axis(rows)], axis=1)


def facebookresearch_state(model: DiTTransformer2DModel) -> dict[str, torch.Tensor]:
    """The diffusers model's weights under facebookresearch's names, in the order of its
    ``DiT.state_dict()``."""
    source = {key: value.detach().clone() for key, value in model.state_dict().items()}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return source[key]

    dim, grid = model.inner_dim, model.config.sample_size // model.config.patch_size
    state = {"pos_embed": torch.from_numpy(mae_positions(dim, grid)).float()[None]}
    for part in ("weight", "bias"):
        state[f"x_embedder.proj.{part}"] = take(f"pos_embed.proj.{part}")
    for index, linear in (("0", "linear_1"), ("2", "linear_2")):
        for part in ("weight", "bias"):
            state[f"t_embedder.mlp.{index}.{part}"] = take(
                f"{_EMBEDDERS}timestep_embedder.{linear}.{part}"
            )
    state["y_embedder.embedding_table.weight"] = take(
        f"{_EMBEDDERS}class_embedder.embedding_table.weight"
    )
    for block in range(model.config.num_layers):
        ours, theirs = f"blocks.{block}.", f"transformer_blocks.{block}."
        for part in ("weight", "bias"):
            state[f"{ours}attn.qkv.{part}"] = torch.cat(
                [take(f"{theirs}attn1.to_{name}.{part}") for name in "qkv"], dim=0
            )
        renames = (
            ("attn.proj", "attn1.to_out.0"), ("mlp.fc1", "ff.net.0.proj"),
            ("mlp.fc2", "ff.net.2"), ("adaLN_modulation.1", "norm1.linear"),
        )  # fmt: skip
        for new, old in renames:
            for part in ("weight", "bias"):
                state[f"{ours}{new}.{part}"] = take(f"{theirs}{old}.{part}")
    for new, old in (("linear", "proj_out_2"), ("adaLN_modulation.1", "proj_out_1")):
        for part in ("weight", "bias"):
            state[f"final_layer.{new}.{part}"] = take(f"{old}.{part}")
    copies = {key for key in source if ".norm1.emb." in key and not key.startswith(_EMBEDDERS)}
    left = sorted(set(source) - used - copies)
    assert not left, f"diffusers tensors the conversion does not use: {left}"
    return {key: value.contiguous() for key, value in state.items()}


def facebookresearch_forward(
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    num_heads: int,
    freq_shift: int,
) -> torch.Tensor:
    """facebookresearch's ``DiT.forward`` on its state dict: ``x [B, C, H, W]``, ``t [B]``,
    ``y [B]`` -> ``[B, out_channels, H, W]``. ``freq_shift``: the timestep sinusoid's
    frequencies are ``10000^(-k / (128 - freq_shift))`` (facebookresearch: 0, diffusers: 1)."""

    def linear(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(h, state[f"{name}.weight"], state[f"{name}.bias"])

    def modulated_norm(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(h, (h.shape[-1],), eps=1e-6)
        return normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    weight = state["x_embedder.proj.weight"]
    dim, channels, patch = weight.shape[0], x.shape[1], weight.shape[-1]
    h = F.conv2d(x, weight, state["x_embedder.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    h = h + state["pos_embed"]
    half = 128
    freqs = torch.exp(
        -math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - freq_shift)
    )
    angles = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    c = linear(F.silu(linear(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = c + state["y_embedder.embedding_table.weight"][y]
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    batch, tokens, head_dim = h.shape[0], h.shape[1], dim // num_heads
    for block in range(depth):
        name = f"blocks.{block}."
        modulation = linear(F.silu(c), f"{name}adaLN_modulation.1").chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        a = modulated_norm(h, shift_msa, scale_msa)
        qkv = linear(a, f"{name}attn.qkv").reshape(batch, tokens, 3, num_heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        weights = ((q * head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        a = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        h = h + gate_msa.unsqueeze(1) * linear(a, f"{name}attn.proj")
        m = modulated_norm(h, shift_mlp, scale_mlp)
        m = linear(F.gelu(linear(m, f"{name}mlp.fc1"), approximate="tanh"), f"{name}mlp.fc2")
        h = h + gate_mlp.unsqueeze(1) * m
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    h = linear(modulated_norm(h, shift, scale), "final_layer.linear")
    out_channels, grid = h.shape[-1] // patch**2, x.shape[-1] // patch
    h = torch.einsum("nhwpqc->nchpwq", h.reshape(batch, grid, grid, patch, patch, out_channels))
    assert channels * 2 == out_channels  # learn_sigma
    return h.reshape(batch, out_channels, grid * patch, grid * patch)


def main() -> None:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(**CONFIG).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            scale = 0.2 if parameter.ndim == 1 else 1.0 / np.sqrt(parameter[0].numel())
            parameter.copy_(torch.randn_like(parameter) * scale)
        first = model.transformer_blocks[0].norm1.emb
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first.state_dict())
    state = facebookresearch_state(model)
    os.makedirs(OUT, exist_ok=True)
    torch.save(state, os.path.join(OUT, "DiT-tiny.pt"))
    model.save_pretrained(os.path.join(OUT, "diffusers"), safe_serialization=True)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    t = np.array([999, 3], np.int64)
    labels = np.array([7, 10], np.int64)  # 10: the null class
    inputs = (nchw(x), torch.from_numpy(t), torch.from_numpy(labels))
    heads = CONFIG["num_attention_heads"]
    with torch.no_grad():
        out = model(*inputs).sample
        as_diffusers = facebookresearch_forward(state, *inputs, heads, freq_shift=1)
        original = facebookresearch_forward(state, *inputs, heads, freq_shift=0)
    conversion_error = (as_diffusers - out).abs().max().item()
    assert conversion_error < 1e-5, (
        f"the converted state dict computes another network: {conversion_error}"
    )
    print(f"facebookresearch forward (diffusers' sinusoid) vs diffusers: {conversion_error:.2e}")
    for step in range(len(t)):
        gap = (original[step] - out[step]).abs().max().item()
        print(
            f"t={t[step]}: facebookresearch's sinusoid vs diffusers' changes the output by {gap:.2e}"
        )
    np.savez_compressed(
        os.path.join(OUT, "outputs.npz"), x=x, t=t, labels=labels, out=nhwc(out),
        out_facebookresearch=nhwc(original),
    )  # fmt: skip
    versions = dict(
        diffusers=diffusers.__version__, torch=torch.__version__,
        facebookresearch_dit=FACEBOOKRESEARCH_COMMIT,
    )  # fmt: skip
    with open(os.path.join(OUT, "versions.json"), "w") as file:
        json.dump(versions, file)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
