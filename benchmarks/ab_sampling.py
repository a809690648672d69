"""Per-step sampling time of the Fashion-MNIST UNet through API that 0.1.0 and now share.

For A/B comparisons across commits, the same script is run against each tree, so that only the
library differs (bench_sampling.py changed between them, so it cannot serve):

    for tree in /tmp/old_worktree .; do PYTHONPATH=$tree JAX_PLATFORMS=cpu \
        .venv/bin/python benchmarks/ab_sampling.py $tree; done

One CPU device, XLA's default flags; DDIM at 50 and DDPM at 100 steps on a batch of 8 (the
UNet of bench_train_step.py's fashion_mnist preset), best of 3 compiled calls, ms per step.
"""

import sys
import time

import jax
import jax.numpy as jnp

import diffjax as dj
from diffjax.models import UNet


def main() -> None:
    model = UNet(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2,
                 attn_resolutions=(14,), dropout=0.1)  # fmt: skip
    shape = (8, 28, 28, 1)
    params = model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros((8,), jnp.int32))["params"]
    model_fn = jax.tree_util.Partial(lambda p, x, t: model.apply({"params": p}, x, t), params)
    schedule = dj.get_schedule("linear", 1000)
    milliseconds = {}
    for name, sampler, steps in (("ddim", dj.ddim_sample, 50), ("ddpm", dj.ddpm_sample, 100)):
        jax.block_until_ready(
            sampler(
                model_fn, schedule, jax.random.key(1), shape, num_steps=steps, prediction_type="eps"
            )
        )
        best = float("inf")
        for repeat in range(3):
            start = time.perf_counter()
            key = jax.random.key(2 + repeat)
            jax.block_until_ready(
                sampler(model_fn, schedule, key, shape, num_steps=steps, prediction_type="eps")
            )
            best = min(best, time.perf_counter() - start)
        milliseconds[name] = round(best / steps * 1e3, 1)
    print(sys.argv[1] if len(sys.argv) > 1 else dj.__file__, "ms per step:", milliseconds)


if __name__ == "__main__":
    main()
