"""Loading a full-size published UNet: seconds and peak memory of diffjax's
``from_pretrained`` beside diffusers' on the SD 1.5 UNet layout (859,520,964 parameters,
3.4 GB of float32 safetensors), measured in the same run.

Usage::

    python benchmarks/bench_pretrained.py [--folder /tmp/sd15_unet_random]

No weights can be downloaded here, so the folder is written once with random weights in SD
1.5's layout (its published ``config.json`` values) by diffjax's own ``save_pretrained``
(which diffusers then loads: a check of the writer at full size). Each loader then runs in a
fresh process; the peak resident memory (``ru_maxrss``) is reported with what the process held
before loading (the imports), and the time until every parameter has been read once
(diffusers maps the file and reads a tensor when it is first used).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(REPO, "benchmarks", "peers", "load_unet_peer.py")
SD15_UNET = dict(
    _class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4,
    layers_per_block=2, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
    attention_head_dim=8, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)  # fmt: skip
LOAD = """
import json, resource, time
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from diffjax.models import from_pretrained
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
module, params = from_pretrained({folder!r})
seconds = time.perf_counter() - start
import jax, numpy as np
total = sum(float(np.sum(leaf)) for leaf in jax.tree.leaves(params))  # every byte read once
read = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(seconds=seconds, seconds_until_read=read, peak_rss_gib=peak / 2**20,
                      rss_before_gib=imported / 2**20)))
"""


def write_random_unet(folder: str) -> None:
    import jax
    import numpy as np

    from diffjax.models import count_params, save_pretrained
    from diffjax.models.unet_weights import unet_from_diffusers_config

    module = unet_from_diffusers_config(SD15_UNET)
    x = jax.numpy.zeros((1, 64, 64, 4))
    context = {"context": jax.numpy.zeros((1, 77, 768))}
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, 0, context)["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape, np.float32) * 0.02, shapes)
    print(f"writing {count_params(params):,} random parameters to {folder}", flush=True)
    save_pretrained(module, params, folder, config=dict(sample_size=64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/sd15_unet_random")
    parser.add_argument("--peer_python", default="/work/peers/bin/python")
    parser.add_argument("--write", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        return write_random_unet(args.write)
    if not os.path.isfile(os.path.join(args.folder, "config.json")):
        # In a child process: a process's peak RSS is inherited by the processes it starts.
        subprocess.run([sys.executable, __file__, "--write", args.folder], check=True)
    ours = subprocess.run(
        [sys.executable, "-c", LOAD.format(folder=args.folder)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    print("diffjax  ", ours.stdout.strip().splitlines()[-1])
    peer = subprocess.run(
        [args.peer_python, PEER, args.folder], capture_output=True, text=True, check=True
    )
    print("diffusers", peer.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
