"""Writes tests/fixtures/lora/: a LoRA of the tiny Stable Diffusion UNet fixture written by
diffjax in the diffusers/PEFT and the kohya formats, and the UNet's output with each loaded
into diffusers by ``StableDiffusionPipeline.load_lora_weights`` (the way users load LoRAs).

Run with diffjax's venv; the reference half runs in the PyTorch peer venv (diffusers with
peft, benchmarks/setup_peers.sh), named by ``--peers``:

    .venv/bin/python benchmarks/port_reference/make_lora_fixture.py --peers /work/peers/bin/python

The LoRA has rank 2 and alpha 4 (scale 2) on every attention projection (to_q, to_k, to_v,
to_out of both attentions of every transformer block), its down factors as diffjax
initialises them and its up factors random (a new LoRA's are zero, which would prove nothing).
"""

from __future__ import annotations

import argparse
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "tests", "fixtures", "lora")
UNET = os.path.join(REPO, "tests", "fixtures", "tiny_sd", "unet")

REFERENCE = """
import numpy as np, torch
from diffusers import StableDiffusionPipeline
inputs = np.load({inputs!r})
x = torch.from_numpy(inputs["x"]).permute(0, 3, 1, 2)
t = torch.from_numpy(inputs["t"])
context = torch.from_numpy(inputs["context"])
out = {{}}
for fmt in ("peft", "kohya"):
    pipe = StableDiffusionPipeline.from_pretrained(
        {pipeline!r}, safety_checker=None, requires_safety_checker=False
    )
    pipe.load_lora_weights({out!r} + f"/sd_{{fmt}}.safetensors")
    with torch.no_grad():
        y = pipe.unet(x, t, encoder_hidden_states=context).sample
    out[fmt] = y.permute(0, 2, 3, 1).numpy()
np.savez({out!r} + "/outputs.npz", **out)
"""


def write_loras() -> None:
    import jax

    import diffjax as dj
    from diffjax.lora import flat_lora, init_lora, nested_lora
    from diffjax.models.lora_weights import save_lora

    module, params = dj.models.from_pretrained(UNET)
    lora = flat_lora(init_lora(jax.random.key(0), params, 2))
    for index, path in enumerate(sorted(lora)):
        shape = lora[path]["up"].shape
        key = jax.random.fold_in(jax.random.key(1), index)
        lora[path]["up"] = 0.2 * jax.random.normal(key, shape)
    lora = nested_lora(lora)
    os.makedirs(OUT, exist_ok=True)
    for format in ("peft", "kohya"):
        save_lora(os.path.join(OUT, f"sd_{format}.safetensors"), lora, module, params,
                  alpha=4.0, format=format)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", required=True, help="The peer venv's python.")
    args = parser.parse_args()
    write_loras()
    script = REFERENCE.format(
        inputs=os.path.join(REPO, "tests", "fixtures", "tiny_sd", "outputs.npz"),
        pipeline=os.path.join(REPO, "tests", "fixtures", "tiny_sd"),
        out=OUT,
    )
    subprocess.run([args.peers, "-c", script], check=True, cwd=REPO)


if __name__ == "__main__":
    main()
