"""FSDP against data parallelism: per-device memory of a training state and step time.

Usage::

    python benchmarks/bench_fsdp.py [--steps 10]

1. Per-device bytes of the training state (parameters, EMA, AdamW's two moments) of the SD 1.5
   UNet layout (859,520,964 parameters, float32) and of DiT-XL/2 (its published tensor shapes)
   under the 'replicated' and the 'fsdp' rule on 8 devices (meshes 8 x 1 and 1 x 8, and
   4 x 2), from ``jax.eval_shape`` / the shapes and the shardings' shard shapes: nothing is
   allocated.
2. The training step's time of a small UNet (the Fashion-MNIST recipe's network, batch 64) on 8
   fake CPU devices under each layout: correctness evidence that the same step compiles and
   runs split, not a speed claim (the fake devices share the machine's cores, so the
   all-gathers cost copies rather than links).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from diffjax import get_schedule  # noqa: E402
from diffjax.models import UNet, count_params  # noqa: E402
from diffjax.models.unet_weights import unet_from_diffusers_config  # noqa: E402
from diffjax.sharding import make_mesh, state_shardings  # noqa: E402
from diffjax.training import (  # noqa: E402
    create_train_state,
    jit_train_step,
    make_denoising_loss,
    make_train_step,
)

SD15_UNET = dict(
    _class_name="UNet2DConditionModel", in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)  # fmt: skip
LAYOUTS = {
    "data parallel (8 x 1, replicated)": ((8, 1), "replicated"),
    "FSDP (1 x 8)": ((1, 8), "fsdp"),
    "FSDP + data (4 x 2)": ((4, 2), "fsdp"),
}


def dit_xl2_shapes() -> dict:
    """The tensor shapes of the published DiT-XL/2 (256x256) checkpoint (Peebles & Xie 2023:
    28 blocks of width 1152, 16 heads, patch 2 on 32x32x4 latents, adaLN-Zero, 1000 classes
    and a null one, learned sigma), written out because diffjax has no DiT yet; Flax layouts
    (a linear weight [in, out]), the fixed position embedding left out."""
    width, shapes = 1152, {}

    def linear(name: str, fan_in: int, fan_out: int) -> None:
        shapes[f"{name}/kernel"], shapes[f"{name}/bias"] = (fan_in, fan_out), (fan_out,)

    shapes["x_embedder/kernel"], shapes["x_embedder/bias"] = (2, 2, 4, width), (width,)
    linear("t_embedder/mlp_0", 256, width)
    linear("t_embedder/mlp_2", width, width)
    shapes["y_embedder/embedding"] = (1001, width)
    for block in range(28):
        linear(f"blocks_{block}/attn/qkv", width, 3 * width)
        linear(f"blocks_{block}/attn/proj", width, width)
        linear(f"blocks_{block}/mlp/fc1", width, 4 * width)
        linear(f"blocks_{block}/mlp/fc2", 4 * width, width)
        linear(f"blocks_{block}/adaLN_modulation", width, 6 * width)
    linear("final_layer/linear", width, 2 * 2 * 8)
    linear("final_layer/adaLN_modulation", width, 2 * width)
    return {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in shapes.items()}


def state_bytes_per_device(abstract_params, mesh, rules: str) -> int:
    """Bytes on one device of params, EMA and AdamW's moments laid out by ``rules``."""
    shardings = state_shardings(abstract_params, mesh, rules)
    per_copy = sum(
        int(np.prod(sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
        for leaf, sharding in zip(jax.tree.leaves(abstract_params), jax.tree.leaves(shardings))
    )
    return 4 * per_copy  # params, EMA, AdamW's mu and nu: four arrays of each shape


def memory_table() -> None:
    module = unet_from_diffusers_config(SD15_UNET)
    x, context = jnp.zeros((1, 64, 64, 4)), {"context": jnp.zeros((1, 77, 768))}
    unet = jax.eval_shape(lambda: module.init(jax.random.key(0), x, 0, context)["params"])
    for model, abstract in (("SD 1.5 UNet layout", unet), ("DiT-XL/2", dit_xl2_shapes())):
        print(f"{model}: {count_params(abstract):,} parameters; state = params + EMA + "
              f"AdamW's 2 moments, float32")  # fmt: skip
        for name, (shape, rules) in LAYOUTS.items():
            mesh = make_mesh(axes=("data", "fsdp"), shape=shape)
            gib = state_bytes_per_device(abstract, mesh, rules) / 2**30
            print(f"  {name:36s} {gib:6.2f} GiB per device")


def step_times(steps: int) -> None:
    model = UNet(base_channels=32, channel_mults=(1, 2, 2), attn_resolutions=(14,), dropout=0.0,
                 num_groups=8)  # fmt: skip
    schedule = get_schedule("linear", 1000)
    optimizer = optax.adamw(1e-4)
    images = jax.random.uniform(jax.random.key(1), (64, 28, 28, 1), minval=-1, maxval=1)

    def init_fn(key):
        return model.init(key, images[:1], jnp.zeros((1,), jnp.int32))["params"]

    loss = make_denoising_loss(model, schedule, prediction_type="eps")
    print(f"train step, {count_params(jax.eval_shape(init_fn, jax.random.key(0))):,} parameters, "
          f"batch 64, 8 fake CPU devices:")  # fmt: skip
    for name, (shape, rules) in LAYOUTS.items():
        mesh = make_mesh(axes=("data", "fsdp"), shape=shape)
        state = create_train_state(
            init_fn, jax.random.key(0), optimizer, mesh,
            shardings=lambda abstract, mesh=mesh, rules=rules: state_shardings(abstract, mesh, rules),
        )  # fmt: skip
        layout = jax.tree.map(lambda leaf: leaf.sharding, state)
        step = jit_train_step(make_train_step(loss, optimizer), mesh, state_shardings=layout)
        batch = {"image": images}
        state, _ = step(state, batch, jax.random.key(2))
        jax.block_until_ready(state)
        start = time.perf_counter()
        for index in range(steps):
            state, metrics = step(state, batch, jax.random.key(3 + index))
        jax.block_until_ready(state)
        seconds = (time.perf_counter() - start) / steps
        print(f"  {name:36s} {1000 * seconds:7.1f} ms per step, loss {float(metrics['loss']):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    memory_table()
    step_times(args.steps)


if __name__ == "__main__":
    main()
