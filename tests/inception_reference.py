"""Random FID Inception-v3 weights in PyTorch naming and layouts, from NumPy alone.

Imported by tests/test_inception.py (diffjax venv) and by
benchmarks/metrics_reference/make_inception_fixture.py (the PyTorch peer venv, which has no
JAX), so it needs nothing but NumPy. The architecture's parameter shapes are therefore written
out here a second time, as pytorch-fid's ``FIDInceptionA..E`` / torch-fidelity's
``InceptionA..E_2`` declare them; the two ends check this table independently: torch-fidelity
loads the state dict with ``strict=True``, and the test compares it with diffjax's key table.

The weights keep activations of order one through the 47 convolutions of the deepest path:
He-normal kernels (std sqrt(2 / fan_in), which a ReLU halves back, He et al. 2015), BatchNorm
gains ``gamma ~ U(0.5, 1.5)`` and running variances ``v ~ U(0.75, 1.5)`` so that
``E[gamma^2] E[1 / v] = (13 / 12) (4 ln 2 / 3) ~ 1.0``, and small running means, BN biases and
fc biases (``N(0, 0.1^2)``).
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["conv_shapes", "random_inception_state_dict", "state_dict_fingerprint", "torch_shapes"]

FC_IN, FC_OUT = 2048, 1008


def _block_a(name: str, cin: int, pool_features: int) -> list[tuple[str, int, int, int, int]]:
    return [
        (f"{name}.branch1x1", cin, 64, 1, 1),
        (f"{name}.branch5x5_1", cin, 48, 1, 1),
        (f"{name}.branch5x5_2", 48, 64, 5, 5),
        (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
        (f"{name}.branch3x3dbl_2", 64, 96, 3, 3),
        (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
        (f"{name}.branch_pool", cin, pool_features, 1, 1),
    ]


def _block_b(name: str, cin: int) -> list[tuple[str, int, int, int, int]]:
    return [
        (f"{name}.branch3x3", cin, 384, 3, 3),
        (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
        (f"{name}.branch3x3dbl_2", 64, 96, 3, 3),
        (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
    ]


def _block_c(name: str, c7: int) -> list[tuple[str, int, int, int, int]]:
    return [
        (f"{name}.branch1x1", 768, 192, 1, 1),
        (f"{name}.branch7x7_1", 768, c7, 1, 1),
        (f"{name}.branch7x7_2", c7, c7, 1, 7),
        (f"{name}.branch7x7_3", c7, 192, 7, 1),
        (f"{name}.branch7x7dbl_1", 768, c7, 1, 1),
        (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
        (f"{name}.branch7x7dbl_3", c7, c7, 1, 7),
        (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
        (f"{name}.branch7x7dbl_5", c7, 192, 1, 7),
        (f"{name}.branch_pool", 768, 192, 1, 1),
    ]


def _block_d(name: str) -> list[tuple[str, int, int, int, int]]:
    return [
        (f"{name}.branch3x3_1", 768, 192, 1, 1),
        (f"{name}.branch3x3_2", 192, 320, 3, 3),
        (f"{name}.branch7x7x3_1", 768, 192, 1, 1),
        (f"{name}.branch7x7x3_2", 192, 192, 1, 7),
        (f"{name}.branch7x7x3_3", 192, 192, 7, 1),
        (f"{name}.branch7x7x3_4", 192, 192, 3, 3),
    ]


def _block_e(name: str, cin: int) -> list[tuple[str, int, int, int, int]]:
    return [
        (f"{name}.branch1x1", cin, 320, 1, 1),
        (f"{name}.branch3x3_1", cin, 384, 1, 1),
        (f"{name}.branch3x3_2a", 384, 384, 1, 3),
        (f"{name}.branch3x3_2b", 384, 384, 3, 1),
        (f"{name}.branch3x3dbl_1", cin, 448, 1, 1),
        (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
        (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
        (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
        (f"{name}.branch_pool", cin, 192, 1, 1),
    ]


def conv_shapes() -> list[tuple[str, int, int, int, int]]:
    """Every ``BasicConv2d`` of the network as ``(module name, in, out, kh, kw)``, 94 rows."""
    return [
        ("Conv2d_1a_3x3", 3, 32, 3, 3),
        ("Conv2d_2a_3x3", 32, 32, 3, 3),
        ("Conv2d_2b_3x3", 32, 64, 3, 3),
        ("Conv2d_3b_1x1", 64, 80, 1, 1),
        ("Conv2d_4a_3x3", 80, 192, 3, 3),
        *_block_a("Mixed_5b", 192, 32),
        *_block_a("Mixed_5c", 256, 64),
        *_block_a("Mixed_5d", 288, 64),
        *_block_b("Mixed_6a", 288),
        *_block_c("Mixed_6b", 128),
        *_block_c("Mixed_6c", 160),
        *_block_c("Mixed_6d", 160),
        *_block_c("Mixed_6e", 192),
        *_block_d("Mixed_7a"),
        *_block_e("Mixed_7b", 1280),
        *_block_e("Mixed_7c", 2048),
    ]


def torch_shapes() -> dict[str, tuple[int, ...]]:
    """``{PyTorch state-dict name: shape}`` of every parameter and BatchNorm statistic
    (without ``num_batches_tracked``), 472 entries."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout, kh, kw in conv_shapes():
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (cout,)
    shapes["fc.weight"] = (FC_OUT, FC_IN)
    shapes["fc.bias"] = (FC_OUT,)
    return shapes


def random_inception_state_dict(seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights for the FID Inception-v3, as ``model.state_dict()`` would hold.

    Args:
      seed: NumPy ``default_rng`` seed.

    Returns:
      ``{name: array}`` in PyTorch layouts (conv ``[O, I, kh, kw]``, fc ``[1008, 2048]``),
      472 float32 arrays plus a ``num_batches_tracked`` int64 scalar per BatchNorm, as
      ``torch.nn.BatchNorm2d`` saves them.
    """
    rng = np.random.default_rng(seed)
    state_dict: dict[str, np.ndarray] = {}
    for name, cin, cout, kh, kw in conv_shapes():
        he_std = np.sqrt(2.0 / (cin * kh * kw))
        state_dict[f"{name}.conv.weight"] = rng.normal(0.0, he_std, (cout, cin, kh, kw))
        state_dict[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout)
        state_dict[f"{name}.bn.bias"] = rng.normal(0.0, 0.1, cout)
        state_dict[f"{name}.bn.running_mean"] = rng.normal(0.0, 0.1, cout)
        state_dict[f"{name}.bn.running_var"] = rng.uniform(0.75, 1.5, cout)
        state_dict[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
    state_dict["fc.weight"] = rng.normal(0.0, np.sqrt(1.0 / FC_IN), (FC_OUT, FC_IN))
    state_dict["fc.bias"] = rng.normal(0.0, 0.1, FC_OUT)
    return {
        key: value if value.dtype == np.int64 else value.astype(np.float32)
        for key, value in state_dict.items()
    }


def state_dict_fingerprint(state_dict: dict[str, np.ndarray]) -> str:
    """SHA-256 over the sorted names, dtypes, shapes and bytes: whether two state dicts (one
    made in each venv) are bit-identical."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = np.ascontiguousarray(state_dict[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
