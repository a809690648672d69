"""Writes the small ``torch.save`` files that tests/test_weights.py reads without torch.

Run with the PyTorch peer venv (``bash benchmarks/setup_peers.sh``):

  benchmarks/.peers-venv/bin/python benchmarks/metrics_reference/make_torch_checkpoint_fixtures.py

It saves one state dict (float32, float16, bfloat16, int64 and bool tensors, a non-contiguous
view and an ``nn.Parameter``) in both of torch's formats, the zip format and the legacy one,
plus the expected arrays as ``.npz`` for the comparison; and a real ``Module.state_dict()`` (an
OrderedDict carrying torch's ``_metadata`` attribute) in both formats.
"""

import collections
import os

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "torch_checkpoints")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=generator)
    state = collections.OrderedDict(
        conv_weight=torch.randn(3, 2, 3, 3, generator=generator),
        half=torch.randn(5, generator=generator).half(),
        bf16=torch.randn(5, generator=generator).bfloat16(),
        steps=torch.tensor(12, dtype=torch.int64),
        mask=torch.tensor([True, False, True]),
        transposed=base.t(),  # a strided view of a larger storage
        column=base[:, 2],
        parameter=torch.nn.Parameter(torch.arange(3.0)),
    )
    torch.save(state, os.path.join(OUT, "state_zip.pth"))
    torch.save(state, os.path.join(OUT, "state_legacy.pth"), _use_new_zipfile_serialization=False)
    expected = {
        key: (value.detach().float() if value.dtype == torch.bfloat16 else value.detach()).numpy()
        for key, value in state.items()
    }
    np.savez(os.path.join(OUT, "expected.npz"), **expected)
    # Module.state_dict() pickles a `_metadata` attribute onto its OrderedDict.
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    torch.save(module.state_dict(), os.path.join(OUT, "module_state_dict.pth"))
    torch.save(
        module.state_dict(),
        os.path.join(OUT, "module_state_dict_legacy.pth"),
        _use_new_zipfile_serialization=False,
    )
    np.savez(
        os.path.join(OUT, "module_expected.npz"),
        **{key: value.numpy() for key, value in module.state_dict().items()},
    )
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
