"""CLIP's text encoder (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision", arXiv:2103.00020, Sec. 2.4), the prompt encoder of Stable Diffusion 1
(OpenAI's CLIP ViT-L/14) and 2 (OpenCLIP ViT-H/14), as transformers' ``CLIPTextModel``:

    h_0 = E_tok[ids] + E_pos[0..L-1]                              [B, L, D]
    h_i = h' + W_2 act(W_1 LN_2(h') + b_1) + b_2,                 i = 1..num_layers
          h' = h_{i-1} + MHA_causal(LN_1(h_{i-1}))
    hidden = LN_final(h_{num_layers - skip_layers})
    pooled = LN_final(h_{num_layers})[b, eos_b]

a pre-LayerNorm Transformer encoder (Vaswani et al. 2017, "Attention Is All You Need"; eq. 1
attention with q, k, v and output projections with biases, ``D / num_heads`` per head) whose
self-attention is causal: position ``n`` attends to positions ``<= n``. ``act`` is
``quick_gelu`` ``x sigmoid(1.702 x)`` (CLIP ViT-L/14) or the exact ``gelu`` ``x Phi(x)``
(OpenCLIP ViT-H/14). ``eos_b`` is where the EOS token of row ``b`` sits (see
:class:`CLIPTextModel`). ``skip_layers=1`` is diffusers' ``clip_skip=1``.

The Flax module names follow transformers' parameter names (``text_model/encoder/layers_0/
self_attn/q_proj``), so each Flax parameter's PyTorch key follows from its path
(:mod:`diffjax.models.diffusers_weights`); :mod:`diffjax.models.clip_weights` loads published
weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

__all__ = ["ACTIVATIONS", "CLIPTextModel"]

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}
"""``hidden_act`` names transformers' CLIP configs use, to their functions: ``quick_gelu``
(``x sigmoid(1.702 x)``, OpenAI CLIP) and ``gelu`` (exact erf GELU, OpenCLIP)."""

_LEGACY_EOS_TOKEN_ID = 2


def _layer_norm(epsilon: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch's LayerNorm: CLIP's residual stream has outlier features.
    return nn.LayerNorm(
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, name=name
    )


class _Embeddings(nn.Module):
    """``E_tok[ids] + E_pos[0..L-1]``: ``ids [B, L]`` -> ``[B, L, D]``."""

    vocab_size: int
    max_positions: int
    hidden_size: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, input_ids: jnp.ndarray) -> jnp.ndarray:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        tokens = nn.Embed(self.vocab_size, self.hidden_size, name="token_embedding", **common)
        positions = nn.Embed(
            self.max_positions, self.hidden_size, name="position_embedding", **common
        )
        return tokens(input_ids) + positions(jnp.arange(input_ids.shape[1]))[None]


class _CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017, eq. 1) of ``x [B, L, D]`` with
    biased q, k, v and output projections; softmax in float32; returns ``[B, L, D]``."""

    num_heads: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        batch, length, channels = x.shape
        head_dim = channels // self.num_heads

        def dense(name: str) -> nn.Dense:
            return nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

        def project(name: str) -> jnp.ndarray:
            return dense(name)(x).reshape(batch, length, self.num_heads, head_dim)

        attended = jax.nn.dot_product_attention(
            project("q_proj"), project("k_proj"), project("v_proj"), is_causal=True
        )  # [B, L, heads, head_dim]
        return dense("out_proj")(attended.reshape(batch, length, channels))


class _MLP(nn.Module):
    """``fc2(act(fc1(x)))`` on ``x [B, L, D]`` with inner width ``intermediate_size``."""

    intermediate_size: int
    hidden_act: str
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Dense(self.intermediate_size, name="fc1", **common)(x)
        h = ACTIVATIONS[self.hidden_act](h)
        return nn.Dense(x.shape[-1], name="fc2", **common)(h)


class _EncoderLayer(nn.Module):
    """One pre-LayerNorm encoder layer: ``h' = x + MHA(LN_1 x)``, ``h' + MLP(LN_2 h')``."""

    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attention = _CausalSelfAttention(self.num_heads, name="self_attn", **common)
        x = x + attention(_layer_norm(self.layer_norm_eps, name="layer_norm1", **common)(x))
        mlp = _MLP(self.intermediate_size, self.hidden_act, name="mlp", **common)
        return x + mlp(_layer_norm(self.layer_norm_eps, name="layer_norm2", **common)(x))


class _Encoder(nn.Module):
    """``num_layers`` encoder layers on ``x [B, L, D]``; returns ``[h_0, ..., h_num_layers]``."""

    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        states = [x]
        for index in range(self.num_layers):
            layer = _EncoderLayer(
                self.num_heads, self.intermediate_size, self.hidden_act, self.layer_norm_eps,
                self.dtype, self.param_dtype, name=f"layers_{index}",
            )  # fmt: skip
            states.append(layer(states[-1]))
        return states


class _TextTransformer(nn.Module):
    """Embeddings, encoder and final LayerNorm (transformers' ``text_model``): ``ids [B, L]``
    -> ``(LN_final(h_{num_layers - skip_layers}), LN_final(h_num_layers))``, both
    ``[B, L, D]``; the fields are :class:`CLIPTextModel`'s."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_positions: int
    hidden_act: str
    layer_norm_eps: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, input_ids: jnp.ndarray, skip_layers: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embeddings = _Embeddings(
            self.vocab_size, self.max_positions, self.hidden_size, name="embeddings", **common
        )
        states = _Encoder(
            self.num_layers, self.num_heads, self.intermediate_size, self.hidden_act,
            self.layer_norm_eps, name="encoder", **common,
        )(embeddings(input_ids))  # fmt: skip
        final = _layer_norm(self.layer_norm_eps, name="final_layer_norm", **common)
        return final(states[self.num_layers - skip_layers]), final(states[-1])


class CLIPTextModel(nn.Module):
    """CLIP's text encoder (module docstring; Radford et al. 2021, Sec. 2.4), as transformers'
    ``CLIPTextModel``.

    ``model.apply({'params': params}, input_ids, skip_layers=0)`` with ``input_ids [B, L]``
    integers, ``L <= max_positions``, returns ``(hidden [B, L, D], pooled [B, D])``, float32:

    - ``hidden = LN_final(h_{num_layers - skip_layers})``: ``skip_layers=0`` is transformers'
      ``last_hidden_state`` (SD's prompt embedding), ``skip_layers=1`` diffusers'
      ``clip_skip=1``, ``final_layer_norm(hidden_states[-2])``.
    - ``pooled = LN_final(h_num_layers)[b, eos_b]``, transformers' ``pooler_output``: with the
      pre-2023 ``eos_token_id == 2`` (SD 1 and 2's configs) ``eos_b`` is the position of the
      largest id (CLIP's EOS, 49407, is the largest id), otherwise the first position of
      ``eos_token_id`` (0 where the row has none).

    All layers run whatever ``skip_layers`` is (``pooled`` needs the last); under ``jax.jit`` XLA
    drops the ones an unused ``pooled`` does not need. Id values are not checked (they may be
    traced): ids ``>= vocab_size`` embed as NaN (``jnp.take``'s fill mode), negative ones count
    from the end of the table.

    Attributes:
      vocab_size, hidden_size, intermediate_size, num_layers, num_heads, max_positions: the
        sizes (``num_layers`` is transformers' ``num_hidden_layers``, ``max_positions`` its
        ``max_position_embeddings``); the defaults are SD 1's CLIP ViT-L/14.
      hidden_act: ``'quick_gelu'`` (SD 1) or ``'gelu'`` (SD 2), see :data:`ACTIVATIONS`.
      layer_norm_eps: every LayerNorm's epsilon.
      eos_token_id: the config's ``eos_token_id``, which decides how ``pooled`` finds the EOS.
      dtype, param_dtype: compute and parameter dtypes (the attention softmax and the outputs
        are float32).
    """

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_positions: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = _LEGACY_EOS_TOKEN_ID
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check(self, input_ids: jnp.ndarray, skip_layers: int) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; expected one of "
                f"{sorted(ACTIVATIONS)}."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}."
            )
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(
                f"input_ids must be integer token ids [B, L], got shape {input_ids.shape} and "
                f"dtype {input_ids.dtype}."
            )
        if not 1 <= input_ids.shape[1] <= self.max_positions:
            raise ValueError(
                f"input_ids has length {input_ids.shape[1]}; expected 1 to "
                f"max_positions={self.max_positions} tokens."
            )
        if not isinstance(skip_layers, int) or not 0 <= skip_layers <= self.num_layers:
            raise ValueError(
                f"skip_layers={skip_layers!r}; expected an int from 0 to "
                f"num_layers={self.num_layers}."
            )

    @nn.compact
    def __call__(
        self, input_ids: jnp.ndarray, skip_layers: int = 0
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(hidden [B, L, D], pooled [B, D])`` float32 of ``input_ids [B, L]`` (class
        docstring).

        Raises:
          ValueError: at trace time, for ids that are not an integer ``[B, L]`` array with
            ``1 <= L <= max_positions``, a ``skip_layers`` outside ``[0, num_layers]``, or an
            unsupported ``hidden_act`` / ``num_heads``.
        """
        self._check(input_ids, skip_layers)
        text_model = _TextTransformer(
            self.vocab_size, self.hidden_size, self.intermediate_size, self.num_layers,
            self.num_heads, self.max_positions, self.hidden_act, self.layer_norm_eps, self.dtype,
            self.param_dtype, name="text_model",
        )  # fmt: skip
        hidden, last = text_model(input_ids, skip_layers)
        ids = input_ids.astype(jnp.int32)
        if self.eos_token_id == _LEGACY_EOS_TOKEN_ID:
            eos = jnp.argmax(ids, axis=-1)
        else:
            eos = jnp.argmax(ids == self.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(last, eos[:, None, None], axis=1)[:, 0]
        return hidden.astype(jnp.float32), pooled.astype(jnp.float32)
