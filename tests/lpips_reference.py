"""Seeded random LPIPS weights in PyTorch's names and layouts, from NumPy alone.

Shared by tests/test_lpips.py and benchmarks/metrics_reference/make_lpips_fixture.py (which runs
in the PyTorch peer venv), so that ``lpips.LPIPS`` and diffjax's port get bit-identical weights
from the same seed without any weight file in the repository. The shapes below are written out
from torchvision's ``alexnet().features`` / ``vgg16().features`` and the lpips v0.1 heads, apart
from diffjax's own tables, so that a wrong index or shape in either shows up as a key-table error.

Kernels are uniform with variance 2 / fan_in (He et al. 2015) and biases small, so ReLU
activations stay O(1) through all thirteen VGG16 convolutions; the heads are uniform in [0, 1),
non-negative like the published ones (lpips clamps them at zero while training).
"""

from __future__ import annotations

import hashlib

import numpy as np

# torchvision `features.<index>` convolutions: (out channels, in channels, kernel size).
BACKBONE_CONVS = {
    "alex": {
        "features.0": (64, 3, 11),
        "features.3": (192, 64, 5),
        "features.6": (384, 192, 3),
        "features.8": (256, 384, 3),
        "features.10": (256, 256, 3),
    },
    "vgg": {
        "features.0": (64, 3, 3),
        "features.2": (64, 64, 3),
        "features.5": (128, 64, 3),
        "features.7": (128, 128, 3),
        "features.10": (256, 128, 3),
        "features.12": (256, 256, 3),
        "features.14": (256, 256, 3),
        "features.17": (512, 256, 3),
        "features.19": (512, 512, 3),
        "features.21": (512, 512, 3),
        "features.24": (512, 512, 3),
        "features.26": (512, 512, 3),
        "features.28": (512, 512, 3),
    },
}

# Channels at the five taps, i.e. of the heads `lin<k>.model.1.weight` [1, C, 1, 1].
HEAD_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}

# torchvision's classifier layers (`classifier.<index>.weight` / `.bias`), present in the published
# backbone files and unused by LPIPS.
CLASSIFIER_LAYERS = {"alex": (1, 4, 6), "vgg": (0, 3, 6)}

_BIAS_HALF_WIDTH = 0.1


def random_backbone_state_dict(net: str, seed: int) -> dict[str, np.ndarray]:
    """torchvision-named ``features.*`` weights [out, in, k, k] and biases [out], float32."""
    rng = np.random.default_rng(seed)
    state_dict = {}
    for prefix, (out_channels, in_channels, kernel) in BACKBONE_CONVS[net].items():
        fan_in = in_channels * kernel * kernel
        # Uniform on [-a, a] has variance a^2 / 3; a = sqrt(6 / fan_in) gives 2 / fan_in.
        half_width = np.sqrt(6.0 / fan_in)
        weight = (2.0 * rng.random((out_channels, in_channels, kernel, kernel)) - 1.0) * half_width
        bias = (2.0 * rng.random(out_channels) - 1.0) * _BIAS_HALF_WIDTH
        state_dict[f"{prefix}.weight"] = weight.astype(np.float32)
        state_dict[f"{prefix}.bias"] = bias.astype(np.float32)
    return state_dict


def random_heads_state_dict(net: str, seed: int) -> dict[str, np.ndarray]:
    """lpips v0.1-named heads ``lin<k>.model.1.weight`` [1, C, 1, 1], float32 in [0, 1)."""
    rng = np.random.default_rng(seed)
    return {
        f"lin{k}.model.1.weight": rng.random((1, channels, 1, 1)).astype(np.float32)
        for k, channels in enumerate(HEAD_CHANNELS[net])
    }


def state_dict_digest(state_dict: dict[str, np.ndarray]) -> str:
    """SHA-256 over the names, shapes and bytes, in key order (to detect a NumPy stream change)."""
    digest = hashlib.sha256()
    for key, value in state_dict.items():
        value = np.ascontiguousarray(value)
        digest.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def signed_unit_images(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1] (``u / 127.5 - 1``), the range lpips expects."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
