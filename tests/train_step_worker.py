"""A tiny stand-in denoiser and one process of the two-process data-parallel test.

``tests/test_step.py`` imports the shared setup from here and also runs this file as a script,
twice, as the two processes of ``jax.distributed``:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
      python tests/train_step_worker.py PROCESS_ID PORT OUT_DIR

Each process owns 4 CPU devices, joins the other through ``jax.distributed.initialize`` on
localhost (gloo CPU collectives), feeds its half of the global batch through
``host_batch_to_global``, runs one jitted train step over the 8 global devices, and writes the
new params and metrics to ``OUT_DIR/process_<id>.npz``.
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_TIMESTEPS = 50
NUM_CLASSES = 3
GLOBAL_BATCH_SIZE = 16
IMAGE_SHAPE = (4, 4, 2)


class TinyDenoiser(nn.Module):
    """A per-pixel MLP with time and label embeddings and dropout: cheap to compile, but it
    exercises every input the UNet takes (x, t, cond['label'], train + the 'dropout' stream)."""

    num_classes: int | None = None
    dropout: float = 0.0
    features: int = 8

    @property
    def cond_keys(self):
        return () if self.num_classes is None else ("label",)

    def null_cond(self, cond):
        return {"label": jnp.full_like(cond["label"], self.num_classes)}

    @nn.compact
    def __call__(self, x, t, cond=None, train=False):
        hidden = nn.Dense(self.features)(x)
        hidden = hidden + nn.Embed(NUM_TIMESTEPS, self.features)(t)[:, None, None, :]
        labels = None if cond is None else cond.get("label")
        if labels is not None:
            label_embedding = nn.Embed(self.num_classes + 1, self.features)(labels)
            hidden = hidden + label_embedding[:, None, None, :]
        hidden = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(hidden))
        return nn.Dense(x.shape[-1])(hidden)


def make_setup():
    """The model, schedule, optimizer, keys and global batch shared by both sides of the test.

    Plain SGD keeps new params linear in the gradient, so the only difference between device
    layouts is the float32 summation order of the gradient all-reduce.
    """
    from diffjax import get_schedule
    from diffjax.training import make_denoising_loss, make_train_step

    model = TinyDenoiser(num_classes=NUM_CLASSES, dropout=0.2)
    images = np.zeros((1,) + IMAGE_SHAPE, np.float32)
    timesteps = labels = np.zeros((1,), np.int32)

    def init_fn(key):
        return model.init(key, images, timesteps, {"label": labels})["params"]

    schedule = get_schedule("cosine", NUM_TIMESTEPS)
    optimizer = optax.sgd(0.5)
    loss_fn = make_denoising_loss(
        model, schedule, prediction_type="v", weighting="min_snr", cond_dropout=0.3
    )
    train_step = make_train_step(loss_fn, optimizer, ema_decay=0.99)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (GLOBAL_BATCH_SIZE,) + IMAGE_SHAPE).astype(np.float32),
        "cond": {"label": rng.integers(0, NUM_CLASSES, GLOBAL_BATCH_SIZE).astype(np.int32)},
    }
    return dict(
        init_fn=init_fn,
        optimizer=optimizer,
        train_step=train_step,
        batch=batch,
        init_key=jax.random.key(0),
        step_key=jax.random.key(1),
    )


def run_one_step(setup, mesh, batch, rules="replicated"):
    """Creates the state on ``mesh`` laid out by the sharding rule ``rules``, runs one jitted
    step; returns flat host params + metrics."""
    from diffjax.sharding import state_shardings
    from diffjax.training import create_train_state, jit_train_step

    state = create_train_state(
        setup["init_fn"], setup["init_key"], setup["optimizer"], mesh,
        shardings=lambda abstract: state_shardings(abstract, mesh, rules),
    )  # fmt: skip
    layout = jax.tree.map(lambda leaf: leaf.sharding, state)
    step = jit_train_step(setup["train_step"], mesh, state_shardings=layout)
    state, metrics = step(state, batch, setup["step_key"])
    flat = {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path((state.params, state.ema_params))
    }
    flat.update({f"metric/{name}": np.asarray(value) for name, value in metrics.items()})
    return flat


def main(process_id: int, port: int, out_dir: str) -> None:
    cache_dir = os.environ.get("DIFFJAX_TEST_COMPILATION_CACHE")
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    from diffjax.training import host_batch_to_global, make_mesh, process_batch_size

    if (jax.local_device_count(), jax.device_count()) != (4, 8):
        raise RuntimeError(f"Expected 4 local of 8 global devices, got {jax.devices()}.")
    setup = make_setup()
    half = GLOBAL_BATCH_SIZE // 2
    local_batch = jax.tree.map(
        lambda value: value[process_id * half : (process_id + 1) * half], setup["batch"]
    )
    mesh = make_mesh()
    if process_batch_size(GLOBAL_BATCH_SIZE, mesh) != half:
        raise RuntimeError(f"process_batch_size should be {half} on each of 2 processes.")
    result = run_one_step(setup, mesh, host_batch_to_global(local_batch, mesh))
    np.savez(os.path.join(out_dir, f"process_{process_id}.npz"), **result)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
