"""The evaluate program for an autoencoder run: PSNR and SSIM of its reconstructions.

``python -m diffjax.evaluate --workdir AE_RUN`` reconstructs the first ``--num`` images of the
run's evaluation split (``config.eval.split``, in order) with its EMA weights (the posterior
mean of a KL autoencoder, the quantized encodings of a VQ one) and averages PSNR and, for
images of at least 11 px, SSIM (:mod:`diffjax.metrics.image_quality`, dm-pix). The running sums
are saved after every batch, so a killed evaluation resumes where it stopped; the result,
with its protocol (split, n, weights, step), is written to ``eval/reconstruction_step_<N>_
<n>.json``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from diffjax.evaluation.features import write_json
from diffjax.metrics.image_quality import psnr, ssim
from diffjax.sharding import gather_to_host, host_batch_to_global
from diffjax.training.workdir import EVAL_DIR, resolve_run_dir

__all__ = ["evaluate_reconstruction"]


def evaluate_reconstruction(
    workdir: str, *, num_images: int, batch_size: int, ema: bool = True
) -> dict[str, Any]:
    """PSNR / SSIM of an autoencoder run's reconstructions (module docstring).

    Args:
      workdir: the autoencoder run.
      num_images: images of the evaluation split to reconstruct (fewer if it has fewer).
      batch_size: images per batch (a multiple of the device count).
      ema: the EMA weights (False: the raw ones).

    Returns:
      The result record (also written as JSON): ``psnr``, ``ssim`` (None below 11 px),
      ``num_images``, ``split``, ``step``, ``weights``, ``seconds``, ``path``.
    """
    from diffjax.data.pipeline import dataset_from_config
    from diffjax.training.trained_run import load_trained_run

    start = time.perf_counter()
    run = load_trained_run(workdir)
    values, module = run.config, run.programs.model
    params = (run.state.ema_params if ema else run.state.params)["autoencoder"]
    split = values["eval"]["split"]
    dataset = dataset_from_config(
        values, run.mesh, split, batch_size, shuffle=False, num_epochs=1, drop_remainder=False,
        random_flip=False,
    )  # fmt: skip
    with_ssim = min(dataset.info.image_shape[:2]) >= 11
    reconstruct = jax.jit(lambda images: module.apply({"params": params}, images)[0])
    tag = f"reconstruction_step_{run.step}_{num_images}_{'ema' if ema else 'raw'}"
    folder = os.path.join(resolve_run_dir(workdir), EVAL_DIR)
    partial_path = os.path.join(folder, f"{tag}.partial.json")
    sums = dict(psnr=0.0, ssim=0.0, num_images=0)
    if os.path.exists(partial_path):
        with open(partial_path) as file:
            sums = json.load(file)
    os.makedirs(folder, exist_ok=True)
    with iter(dataset) as iterator:
        for index, batch in enumerate(iterator):
            done = index * batch_size
            if done >= num_images:
                break
            if done < sums["num_images"]:
                continue  # measured before a kill
            images = host_batch_to_global(batch, run.mesh)["image"]
            recon = reconstruct(images)
            keep = min(num_images - done, images.shape[0])
            images, recon = (np.asarray(gather_to_host(a))[:keep] for a in (images, recon))
            sums["psnr"] += float(np.sum(psnr(images, recon)))
            if with_ssim:
                sums["ssim"] += float(np.sum(ssim(images, recon)))
            sums["num_images"] += keep
            if jax.process_index() == 0:
                write_json(partial_path, sums)
    count = max(sums["num_images"], 1)
    result = dict(
        psnr=sums["psnr"] / count, ssim=sums["ssim"] / count if with_ssim else None,
        num_images=sums["num_images"], split=split, step=run.step,
        weights="ema" if ema else "raw", seconds=time.perf_counter() - start,
        path=os.path.join(folder, f"{tag}.json"),
    )  # fmt: skip
    if jax.process_index() == 0:
        write_json(result["path"], result)
        os.remove(partial_path)
    return result
