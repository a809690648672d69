"""diffusers' UNet2DConditionModel.from_pretrained on a folder: seconds and peak RSS.

Runs in the PyTorch peer venv (benchmarks/setup_peers.sh); benchmarks/bench_pretrained.py
starts it on the folder it wrote. Usage: load_unet_peer.py FOLDER
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
from diffusers import UNet2DConditionModel


def main(folder: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    model = UNet2DConditionModel.from_pretrained(folder)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        sum(float(p.sum()) for p in model.parameters())  # every byte read once
    read = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(
        seconds=seconds, seconds_until_read=read, peak_rss_gib=peak / 2**20, rss_before_gib=before / 2**20,
        params=sum(p.numel() for p in model.parameters()), torch=torch.__version__,
    )))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
