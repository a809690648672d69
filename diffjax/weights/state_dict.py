"""One weights file as a state dict ``{name: array}``, whatever its format: the reader that
the model ports (:mod:`diffjax.models.pretrained`, the DiT checkpoint loader) share."""

from __future__ import annotations

import os

import numpy as np

from diffjax.weights.torch_checkpoint import UnsupportedCheckpointError, load_torch_checkpoint

__all__ = ["load_state_dict"]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads one weights file as ``{name: array}``: ``.safetensors`` through the safetensors
    package's NumPy reader, anything else through diffjax's restricted ``torch.save`` reader
    (which refuses any pickled global but tensors, naming it).

    A single-file checkpoint that wraps its state dict (``{'state_dict': {...}, ...}``, the
    original SD ``.ckpt`` files) is unwrapped.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        # One tensor at a time out of the mapped file: the peak is one copy of the weights.
        with safe_open(path, framework="numpy") as file:
            return {key: file.get_tensor(key) for key in file.keys()}
    checkpoint = load_torch_checkpoint(path)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(
        isinstance(key, str) and isinstance(value, np.ndarray) for key, value in checkpoint.items()
    ):
        raise UnsupportedCheckpointError(
            f"{path} holds no state dict (a mapping of names to tensors, possibly under "
            f"'state_dict')."
        )
    return checkpoint
