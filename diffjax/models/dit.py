"""DiT: the diffusion transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers", arXiv:2212.09748), in Flax Linen.

    tokens = patchify(x) + pos                 (a p x p stride-p convolution; fixed 2-D sin-cos
                                                positions, Sec. 3.2)
    c = MLP(sinusoid(t)) + embed(y)            (timestep and class embedders)
    per block, adaLN-Zero (Sec. 3.2, "adaLN-Zero block"):
      (shift1, scale1, gate1, shift2, scale2, gate2) = W silu(c)     (W zero-initialised)
      h = h + gate1 * Attention(LN(h) (1 + scale1) + shift1)
      h = h + gate2 * MLP(LN(h) (1 + scale2) + shift2)              (GELU, tanh approximation)
    out = unpatchify(W_out (LN(h) (1 + scale) + shift)),  (shift, scale) = W_f silu(c)

The LayerNorms have no affine parameters; the modulations and the output projection are
zero-initialised, so a new DiT outputs exactly 0 (the paper's "Zero" initialisation). The class
label ``num_classes`` is the null label of classifier-free guidance, as for the UNet.
Parameter names follow diffusers' ``DiTTransformer2DModel`` (``transformer_blocks_0/attn1/to_q``,
``proj_out_2``), so published weights map onto it by name (:mod:`diffjax.models.dit_weights`).

It is called as every registered network is, ``dit(x, t, cond, train=...)``, with the class in
``cond['label']`` when ``num_classes`` is set (:mod:`diffjax.models.conditioning`).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.typing import Dtype

from diffjax.models.layers import sinusoidal_embedding
from diffjax.models.transformer import Attention

__all__ = ["DIT_PRESETS", "DiT", "sincos_positions", "stack_blocks", "unstack_blocks"]

DIT_PRESETS: dict[str, dict[str, int]] = {
    "DiT-S": dict(hidden_size=384, depth=12, num_heads=6),
    "DiT-B": dict(hidden_size=768, depth=12, num_heads=12),
    "DiT-L": dict(hidden_size=1024, depth=24, num_heads=16),
    "DiT-XL": dict(hidden_size=1152, depth=28, num_heads=16),
}
"""The paper's model sizes (Table 1); each takes patch 2, 4 or 8 (``DiT-XL/2``: patch 2)."""

_TIME_FEATURES = 256


def sincos_positions(
    dim: int, grid_height: int, grid_width: int, base_size: int | None = None
) -> np.ndarray:
    """Fixed 2-D sin-cos position embeddings ``[grid_height * grid_width, dim]`` (MAE's, used by
    DiT): half the channels encode the column, half the row, each as ``[sin(p w_k), cos(p
    w_k)]`` with ``w_k = 10000^(-k / (dim / 4))``; positions are scaled by ``base_size /
    grid`` (diffusers' convention, so a grid other than the training one keeps the same range).
    Per axis this is the sinusoid of Vaswani et al. 2017, Sec. 3.5; DiT adds it to the patch
    tokens (Peebles & Xie 2023, Sec. 3.2).

    Args:
      dim: the embedding width, a multiple of 4.
      grid_height: the patch grid's rows.
      grid_width: the patch grid's columns.
      base_size: the training grid's side (default: the grid's own).
    """
    if dim % 4:
        raise ValueError(f"the position embedding width {dim} must be a multiple of 4.")
    rows = np.arange(grid_height) / (grid_height / (base_size or grid_height))
    columns = np.arange(grid_width) / (grid_width / (base_size or grid_width))
    column_grid, row_grid = np.meshgrid(columns, rows)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def one_axis(positions: np.ndarray) -> np.ndarray:
        angles = positions.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(column_grid), one_axis(row_grid)], axis=1).astype(np.float32)


class _Mlp(nn.Module):
    """``linear_2(silu(linear_1(x)))``: diffusers' ``TimestepEmbedding`` and SD3's
    ``PixArtAlphaTextProjection`` (``act_fn='silu'``)."""

    features: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(nn.Dense(self.features, name="linear_1", **common)(x))
        return nn.Dense(self.features, name="linear_2", **common)(h)


class _Linear(nn.Module):
    """A zero-initialised ``linear`` Dense in a named scope (diffusers' ``norm1.linear``)."""

    features: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return nn.Dense(
            self.features, kernel_init=nn.initializers.zeros, name="linear", dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)  # fmt: skip


class _FeedForward(nn.Module):
    """``net_2(GELU_tanh(net_0.proj(x)))``, ``mlp_ratio`` times wider inside."""

    mlp_ratio: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = x.shape[-1]
        hidden = _Projection(int(width * self.mlp_ratio), name="net_0", **common)(x)
        return nn.Dense(width, name="net_2", **common)(nn.gelu(hidden, approximate=True))


class _Projection(nn.Module):
    """A Dense named ``proj`` (diffusers' ``GELU`` module's projection)."""

    features: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return nn.Dense(self.features, name="proj", dtype=self.dtype, param_dtype=self.param_dtype)(
            x
        )


class _PatchEmbed(nn.Module):
    """``[B, H, W, C] -> [B, H/p * W/p, D]``: a p x p stride-p convolution named ``proj``, its
    output flattened row by row."""

    features: int
    patch_size: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.patch_size
        h = nn.Conv(
            self.features, (p, p), strides=(p, p), padding="VALID", name="proj",
            dtype=self.dtype, param_dtype=self.param_dtype,
        )(x)  # fmt: skip
        return h.reshape(h.shape[0], -1, self.features)


class _ClassEmbedder(nn.Module):
    """The label embedding table (``num_embeddings`` rows, the last the null label)."""

    num_embeddings: int
    features: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, labels: jnp.ndarray) -> jnp.ndarray:
        return nn.Embed(
            self.num_embeddings, self.features, name="embedding_table", dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(labels)  # fmt: skip


class _Block(nn.Module):
    """One adaLN-Zero block (module docstring) on tokens ``[B, N, D]`` conditioned on
    ``c [B, D]``."""

    num_heads: int
    mlp_ratio: float
    mlp_norm_epsilon: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, h: jnp.ndarray, c: jnp.ndarray) -> jnp.ndarray:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        modulation = _Linear(6 * h.shape[-1], name="norm1", **common)(nn.silu(c))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(modulation[:, None], 6, -1)
        norm = functools.partial(nn.LayerNorm, use_bias=False, use_scale=False, **common)
        x = norm(epsilon=1e-6)(h) * (1 + scale1) + shift1
        h = h + gate1 * Attention(self.num_heads, qkv_bias=True, name="attn1", **common)(x)
        x = norm(epsilon=self.mlp_norm_epsilon)(h) * (1 + scale2) + shift2
        return h + gate2 * _FeedForward(self.mlp_ratio, name="ff", **common)(x)


class _ScanStep(nn.Module):
    """One block as a step of ``nn.scan``: ``(h, c) -> (block(h, c), None)``."""

    block: Any
    settings: tuple[int, float, float]
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, h: jnp.ndarray, c: jnp.ndarray) -> tuple[jnp.ndarray, None]:
        block = self.block(*self.settings, name="block", dtype=self.dtype,
                           param_dtype=self.param_dtype)  # fmt: skip
        return block(h, c), None


def stack_blocks(params: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """An unrolled DiT's parameters (``transformer_blocks_0`` .. ``_{depth-1}``) in the layout
    of ``scan_blocks=True``: one ``transformer_blocks/block`` tree, each leaf stacked on a
    leading ``depth`` axis."""
    blocks = [params[f"transformer_blocks_{index}"] for index in range(depth)]
    rest = {k: v for k, v in params.items() if not k.startswith("transformer_blocks_")}
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)
    return {**rest, "transformer_blocks": {"block": stacked}}


def unstack_blocks(params: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`stack_blocks`."""
    stacked = params["transformer_blocks"]["block"]
    depth = jax.tree.leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != "transformer_blocks"}
    blocks = {
        f"transformer_blocks_{index}": jax.tree.map(lambda leaf, i=index: leaf[i], stacked)
        for index in range(depth)
    }
    return {**rest, **blocks}


class DiT(nn.Module):
    """The diffusion transformer (module docstring), predicting an image-shaped output from
    ``(x_t, t, cond)``: patchify and adaLN-Zero blocks (Peebles & Xie 2023, Sec. 3.2).

    Attributes:
      patch_size: p; image sides must be multiples of it (DiT: 2, 4 or 8).
      hidden_size: token width D (a multiple of 4 and of ``num_heads``).
      depth: transformer blocks.
      num_heads: attention heads.
      mlp_ratio: the MLP's hidden width over D.
      num_classes: enables class conditioning on ``cond['label']`` (``num_classes + 1``
        embedding rows; ``num_classes`` is the null label); None: unconditional.
      in_channels: the input's channels C, checked against ``x``; None: any (published
        weights set it, so their key table has the input convolution's shape).
      out_channels: output channels; None: the input's (``2 C`` with ``learn_sigma``).
      learn_sigma: also output Improved DDPM's variance values (the published models): the
        output is ``[B, H, W, 2 C]``, the prediction then the values
        (:attr:`learned_variance`; sampled by DDPM's ``variance='learned_range'``, trained
        with the hybrid loss's ``vlb_weight``). Needs ``out_channels=None``.
      sample_size: the image side the position embeddings are scaled to (the training
        resolution; other sizes keep the same position range); None: the input's.
      mlp_norm_epsilon: the MLP's LayerNorm epsilon (original DiT: 1e-6; diffusers' configs
        carry 1e-5).
      time_freq_shift: the timestep sinusoid's frequencies are ``10000^(-k / (128 - shift))``:
        1 is diffusers' ``DiTTransformer2DModel``, 0 facebookresearch's original DiT (its
        published checkpoints, :func:`~diffjax.models.dit_weights.dit_from_checkpoint`).
      dtype, param_dtype: compute and parameter dtypes (attention logits and LayerNorm
        statistics stay float32; the output is float32).
      remat: recompute each block's activations in the backward pass.
      scan_blocks: run the blocks as one ``nn.scan`` (their parameters stacked on a leading
        ``depth`` axis under ``transformer_blocks``), so compile time stays flat in depth;
        :func:`stack_blocks` / :func:`unstack_blocks` convert parameters between the layouts
        (published weights load into the unrolled one).
    """

    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int | None = 1000
    in_channels: int | None = None
    out_channels: int | None = None
    learn_sigma: bool = False
    sample_size: int | None = None
    mlp_norm_epsilon: float = 1e-6
    time_freq_shift: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    scan_blocks: bool = False

    def __post_init__(self) -> None:
        """Validates the configuration at construction, before any tracing."""
        super().__post_init__()
        if self.patch_size < 1 or self.depth < 1:
            raise ValueError(
                f"patch_size and depth must be >= 1, got {self.patch_size}, {self.depth}."
            )
        if self.hidden_size % 4 or self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of 4 and of "
                f"num_heads={self.num_heads}."
            )
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}.")
        if self.learn_sigma and self.out_channels is not None:
            raise ValueError(
                f"learn_sigma=True outputs 2 C channels (prediction and variance values); "
                f"out_channels must be None, got {self.out_channels}."
            )

    @property
    def learned_variance(self) -> bool:
        """Whether the output carries variance values beside the prediction (``learn_sigma``;
        :mod:`diffjax.models.conditioning`)."""
        return self.learn_sigma

    @property
    def cond_keys(self) -> tuple[str, ...]:
        """``('label',)`` for a class-conditional DiT, else ``()``."""
        return () if self.num_classes is None else ("label",)

    def null_cond(self, cond: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
        """The null label ``num_classes`` for every example."""
        return {"label": jnp.full_like(jnp.asarray(cond["label"]), self.num_classes)}

    def _labels(self, cond: Any, batch: int) -> jnp.ndarray | None:
        labels = None if cond is None else cond.get("label")
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("cond['label'] was given but the DiT has num_classes=None.")
            return None
        if labels is None:
            raise ValueError(
                f"The DiT is class-conditional (num_classes={self.num_classes}) and needs "
                f"cond['label'] int [B]; the null label is {self.num_classes}."
            )
        labels = jnp.asarray(labels)
        if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"cond['label'] must be an int array [B] = [{batch}], got {labels.dtype} "
                f"{labels.shape}."
            )
        return labels

    def _embed(self, x: jnp.ndarray, t: Any, cond: Any) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The input checks, patch and position embedding, timestep and class embedding.

        Called from a compact method (:meth:`__call__`, or a ControlNet's, which copies these
        layers under the same names).

        Returns:
          ``(h, c)``: tokens ``[B, N, D]`` and the conditioning vector ``[B, D]``.
        """
        if (
            x.ndim != 4 or x.shape[1] % self.patch_size or x.shape[2] % self.patch_size
            or x.shape[-1] != (self.in_channels or x.shape[-1])
        ):  # fmt: skip
            raise ValueError(
                f"x must be [B, H, W, C] with H and W multiples of patch_size="
                f"{self.patch_size} and C = in_channels={self.in_channels} when set, got shape "
                f"{x.shape}."
            )
        batch, height, width, _ = x.shape
        p, common = self.patch_size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        t = jnp.broadcast_to(jnp.asarray(t), (batch,))
        labels = self._labels(cond, batch)
        h = _PatchEmbed(self.hidden_size, p, name="pos_embed", **common)(x.astype(self.dtype))
        base = None if self.sample_size is None else self.sample_size // p
        positions = sincos_positions(self.hidden_size, height // p, width // p, base)
        h = h + positions.astype(h.dtype)
        # diffusers' TimestepEmbedding of the 256-wide cosine-first sinusoid, frequencies
        # 10000^(-k / (128 - time_freq_shift)).
        sinusoid = sinusoidal_embedding(
            t, _TIME_FEATURES, flip_sin_to_cos=True, freq_shift=self.time_freq_shift
        )
        c = _Mlp(self.hidden_size, name="timestep_embedder", **common)(sinusoid)
        if labels is not None:
            c = c + _ClassEmbedder(
                self.num_classes + 1, self.hidden_size, name="class_embedder", **common
            )(labels)
        return h, c

    def _block(self, index: int) -> nn.Module:
        """Transformer block ``index`` of the unrolled layout."""
        block = nn.remat(_Block) if self.remat else _Block
        return block(
            self.num_heads, self.mlp_ratio, self.mlp_norm_epsilon,
            name=f"transformer_blocks_{index}", dtype=self.dtype, param_dtype=self.param_dtype,
        )  # fmt: skip

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        t: jnp.ndarray,
        cond: Mapping[str, Any] | None = None,
        train: bool = False,
        control_residuals: Sequence[jnp.ndarray] | None = None,
    ) -> jnp.ndarray:
        """Runs the DiT.

        Args:
          x: ``[B, H, W, C]`` float, ``H`` and ``W`` multiples of ``patch_size``.
          t: timesteps ``[B]`` (or a scalar), embedded as given.
          cond: ``{'label': int [B]}`` for a class-conditional DiT, else None or ``{}``.
          train: unused (no dropout); accepted as every registered network's argument.
          control_residuals: R token arrays ``[B, N, D]`` of a ControlNet
            (:class:`~diffjax.models.controlnet.DiTControlNet`); residual ``i // k`` is added
            to block i's output, ``k = ceil(depth / R)`` (SD3's ControlNet convention); None:
            none. Needs ``scan_blocks=False``.

        Returns:
          ``[B, H, W, out_channels]`` float32.

        Raises:
          ValueError: at trace time, for a bad image size or label, or residuals that do not
            match the tokens.
        """
        batch, height, width, channels = x.shape
        p, common = self.patch_size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h, c = self._embed(x, t, cond)
        interval = _control_interval(self, h, control_residuals)
        if self.scan_blocks:
            block = nn.remat(_Block) if self.remat else _Block
            scanned = nn.scan(
                _ScanStep, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=nn.broadcast, length=self.depth,
            )  # fmt: skip
            settings = (self.num_heads, self.mlp_ratio, self.mlp_norm_epsilon)
            h, _ = scanned(block, settings, name="transformer_blocks", **common)(h, c)
        for index in range(0 if self.scan_blocks else self.depth):
            h = self._block(index)(h, c)
            if control_residuals is not None:
                h = h + control_residuals[index // interval].astype(h.dtype)
        shift, scale = jnp.split(
            nn.Dense(2 * self.hidden_size, kernel_init=nn.initializers.zeros, name="proj_out_1",
                     **common)(nn.silu(c))[:, None],
            2, axis=-1,
        )  # fmt: skip
        h = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, **common)(h)
        out_channels = self.out_channels
        if out_channels is None:
            out_channels = 2 * channels if self.learn_sigma else channels
        h = nn.Dense(p * p * out_channels, kernel_init=nn.initializers.zeros, name="proj_out_2",
                     **common)(h * (1 + scale) + shift)  # fmt: skip
        grid_h, grid_w = height // p, width // p
        h = h.reshape(batch, grid_h, grid_w, p, p, out_channels)
        h = jnp.transpose(h, (0, 1, 3, 2, 4, 5)).reshape(batch, height, width, out_channels)
        return h.astype(jnp.float32)


def _control_interval(
    dit: DiT, tokens: jnp.ndarray, residuals: Sequence[jnp.ndarray] | None
) -> int:
    """``ceil(depth / R)``, the blocks per ControlNet residual, after checking them."""
    if residuals is None:
        return 1
    if dit.scan_blocks:
        raise ValueError("control_residuals need the unrolled blocks (scan_blocks=False).")
    shapes = {tuple(residual.shape) for residual in residuals}
    if not residuals or len(residuals) > dit.depth or shapes != {tuple(tokens.shape)}:
        raise ValueError(
            f"control_residuals must be 1 to depth={dit.depth} arrays of the tokens' shape "
            f"{tuple(tokens.shape)}; got {len(residuals)} of shapes {sorted(shapes)}."
        )
    return -(-dit.depth // len(residuals))
