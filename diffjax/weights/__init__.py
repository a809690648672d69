"""Published weight files: finding and verifying them, reading PyTorch ``.pth`` files without
torch or arbitrary unpickling, and explicit key tables into Flax variables.

Used by the metric feature networks (:mod:`diffjax.metrics`) and by model ports; it imports
neither.
"""

from diffjax.weights.files import (
    WEIGHTS_DIR_ENV,
    WeightsChecksumError,
    WeightsFile,
    WeightsUnavailableError,
    default_weights_dir,
    host_reachable,
    resolve_weights,
    sha256_of_file,
    verify_checksum,
)
from diffjax.weights.key_tables import (
    KeyRule,
    StateDictMismatchError,
    apply_key_table,
    conv_kernel,
    linear_kernel,
)
from diffjax.weights.state_dict import load_state_dict
from diffjax.weights.torch_checkpoint import (
    UnsupportedCheckpointError,
    load_torch_checkpoint,
    read_torch_state_dict,
)

__all__ = [
    "WEIGHTS_DIR_ENV",
    "KeyRule",
    "StateDictMismatchError",
    "UnsupportedCheckpointError",
    "WeightsChecksumError",
    "WeightsFile",
    "WeightsUnavailableError",
    "apply_key_table",
    "conv_kernel",
    "default_weights_dir",
    "host_reachable",
    "linear_kernel",
    "load_state_dict",
    "load_torch_checkpoint",
    "read_torch_state_dict",
    "resolve_weights",
    "sha256_of_file",
    "verify_checksum",
]
