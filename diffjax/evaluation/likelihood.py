"""Bits/dim of a trained run on its evaluation split, resumable per image.

The discrete variational bound (:func:`diffjax.likelihood.bits_per_dim`) and the
probability-flow ODE likelihood with uniform dequantization
(:func:`diffjax.likelihood.ode_likelihood`) of the first images of ``config.eval.split``; the
per-image values are saved after each batch, so a killed job continues where it stopped.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffjax.images import atomic_write
from diffjax.sharding import broadcast_int, gather_to_host, host_batch_to_global

__all__ = ["bits_per_dim_job", "save_array"]


def save_array(path: str, array: np.ndarray) -> None:
    """Writes ``array`` as ``.npy``, atomically."""

    def write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def bits_per_dim_job(
    run: Any, settings: Any, mesh: Mesh, folder: str, method: str
) -> dict[str, Any]:
    """Mean bits/dim on the first ``bpd_num`` evaluation images, resumably (per-image values
    are saved after each batch).

    ``method`` 'vlb' is the discrete variational bound (``bpd_timesteps`` timesteps per image),
    'ode' the probability-flow ODE likelihood with uniform dequantization; image i draws its
    randomness from ``fold_in(seed, i)`` and is conditioned on its own ``cond``.

    Raises:
      ConfigError: a latent run (its likelihood would be that of the latents, not the images).
    """
    from diffjax.codecs import is_identity
    from diffjax.data.pipeline import dataset_from_config
    from diffjax.errors import ConfigError
    from diffjax.likelihood import bits_per_dim, ode_likelihood
    from diffjax.models.conditioning import learned_variance, make_model_fn, prediction_channels
    from diffjax.samplers import sample_keys
    from diffjax.training.frozen import run_network_params

    if not is_identity(run.programs.codec):
        raise ConfigError(
            f"bits/dim is the likelihood of the images; this run diffuses in the latent space "
            f"of codec {run.programs.codec.name!r}, whose latents' likelihood it would measure."
        )
    values = run.config
    batch_size = settings.batch_size
    dataset = dataset_from_config(
        values, mesh, values["eval"]["split"], batch_size, shuffle=False, num_epochs=1,
        drop_remainder=False,
    )  # fmt: skip
    total = min(settings.bpd_num, dataset.info.num_examples)
    model, process = run.model, run.process
    params = run_network_params(run, run.state.ema_params if settings.ema else run.state.params)
    prediction_type = values["diffusion"]["prediction_type"]

    learned = learned_variance(model)

    @jax.jit
    def batch_bpd(params, images, cond, keys):
        model_fn = make_model_fn(model, params, cond)
        if method == "vlb":
            bound = bits_per_dim(
                model_fn, process, images, keys[0], prediction_type=prediction_type,
                num_timesteps=settings.bpd_timesteps,
                variance="learned_range" if learned else "small",
            )  # fmt: skip
            return bound.bpd, jnp.zeros((), jnp.int32)
        result = ode_likelihood(
            prediction_channels(model_fn) if learned else model_fn, process, images, keys, prediction_type=prediction_type, dequantize=True,
            divergence=settings.bpd_divergence, autodiff=settings.bpd_autodiff,
            rtol=settings.bpd_rtol, atol=settings.bpd_rtol,
        )  # fmt: skip
        return result.bpd, result.stats.num_function_evals

    name = "bpd" if method == "vlb" else "bpd_ode"
    path = os.path.join(folder, f"{name}.npy")
    values_done = (
        np.load(path) if os.path.exists(path) and jax.process_index() == 0 else np.zeros(0)
    )
    done = broadcast_int(values_done.size)
    evaluations = []
    start = time.perf_counter()
    iterator = iter(dataset)
    try:
        for _ in range(done // batch_size):
            next(iterator)
        collected = [values_done]
        while done < total:
            batch = next(iterator)
            wanted = batch_size * len(mesh.local_devices) // mesh.devices.size
            short = wanted - np.shape(batch["image"])[0]
            if short > 0:  # a short last batch is padded with its last example
                batch = jax.tree.map(
                    lambda value: np.concatenate([value, np.repeat(value[-1:], short, 0)]), batch
                )
            batch = host_batch_to_global(batch, mesh)
            if method == "vlb":
                keys = jax.random.fold_in(jax.random.key(settings.seed), done)[None]
            else:
                keys = sample_keys(settings.seed, done, batch_size)
            bpd, nfe = batch_bpd(params, batch["image"], batch["cond"], keys)
            result = gather_to_host(bpd)
            evaluations.append(int(nfe))
            count = min(batch_size, total - done)
            collected.append(result[:count])
            done += count
            if jax.process_index() == 0:
                save_array(path, np.concatenate(collected))
    finally:
        iterator.close()
    bpd = np.concatenate(collected)
    summary = dict(
        mean=float(bpd.mean()), std_error=float(bpd.std(ddof=1) / math.sqrt(bpd.size)),
        num_images=int(bpd.size), seconds=round(time.perf_counter() - start, 2),
    )  # fmt: skip
    if method == "vlb":
        return dict(summary, timesteps=settings.bpd_timesteps or "all")
    return dict(
        summary, rtol=settings.bpd_rtol, divergence=settings.bpd_divergence,
        autodiff=settings.bpd_autodiff, dequantized=True,
        mean_function_evals=float(np.mean(evaluations)) if evaluations else None,
    )  # fmt: skip
