"""colab/latent_and_control.ipynb runs top to bottom on the CPU in its small setting.

The notebook trains six tiny runs (autoencoder, latent diffusion on it, a pixel base model, a
noisy classifier, a ControlNet and a LoRA of the base) and generates from the tiny random-weight
Stable Diffusion folder of tests/fixtures/tiny_sd; the test checks what each section claims.
The fixtures (offline Fashion-MNIST slice, no network, small setting) are tests/conftest.py's.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from notebook_support import COLAB_DIR, REPO_ROOT, run_notebook

NOTEBOOK = COLAB_DIR / "latent_and_control.ipynb"
TINY_SD = REPO_ROOT / "tests" / "fixtures" / "tiny_sd"


def _finite_images(images, shape, clipped=True):
    """Finite images of ``shape``; ``clipped``: in [-1, 1] (samplers with clip_x0 and a last
    step to x0; decoded latents and flow Euler's last step may overshoot slightly)."""
    images = np.asarray(images)
    assert images.shape == shape
    assert np.all(np.isfinite(images))
    if clipped:
        assert np.all(np.abs(images) <= 1.0 + 1e-6)


def test_latent_and_control_runs_small(notebook_env, unoptimized, monkeypatch):
    monkeypatch.setenv("DIFFJAX_SD_DIR", str(TINY_SD))
    seconds, last = [], [time.perf_counter()]

    def after_cell(index, namespace):
        now = time.perf_counter()
        seconds.append(now - last[0])
        last[0] = now

    try:
        ns = run_notebook(NOTEBOOK, after_cell)
    finally:
        # The share of each code cell in the run (shown with -s or on failure).
        print("seconds per code cell:", [round(s, 1) for s in seconds])
    steps, num_samples = ns["STEPS"], ns["NUM_SAMPLES"]
    workdir = notebook_env / "runs"

    # 1. The autoencoder: trained to its step count, its L1 error falls, its statistics are
    # written, and it maps 28x28x1 images to 7x7x4 latents and back.
    assert int(ns["ae_state"].step) == steps["autoencoder"]
    ae_l1 = ns["ae_l1"]
    assert len(ae_l1) == steps["autoencoder"] and np.all(np.isfinite(ae_l1))
    assert ae_l1[-3:].mean() < ae_l1[:3].mean()
    statistics = json.loads((workdir / "autoencoder" / "latent_statistics.json").read_text())
    assert statistics  # the latent run reads its scale from here
    assert ns["latent_mean"].shape == (8, 7, 7, 4)
    assert ns["reconstructions"].shape == (8, 28, 28, 1)
    assert np.isfinite(ns["reconstruction_l1"]) and ns["reconstruction_l1"] > 0
    # The notebook's error is the mean of the reconstructions' absolute error, recomputed here.
    recomputed = np.mean(np.abs(np.asarray(ns["reconstructions"]) - np.asarray(ns["test_images"])))
    np.testing.assert_allclose(ns["reconstruction_l1"], recomputed, rtol=1e-5)

    # 2. Latent diffusion: the run samples 7x7x4 latents and returns them decoded to pixels.
    assert int(ns["latent_state"].step) == steps["latent"]
    assert ns["latent_run"].config["codec"]["name"] == "autoencoder"
    _finite_images(ns["latent_samples"], (num_samples, 28, 28, 1), clipped=False)

    # 3. + 4. Classifier guidance: the same keys, and the guide changes the samples.
    assert ns["base_run"].step == steps["base"]
    assert ns["classifier_run"].step == steps["classifier"]
    shape = (num_samples, 28, 28, 1)
    _finite_images(ns["unguided"], shape)
    _finite_images(ns["guided"], shape)
    assert np.abs(ns["guided"] - ns["unguided"]).max() > 1e-3
    assert np.isfinite(ns["log_p_unguided"]) and np.isfinite(ns["log_p_guided"])

    # 5. ControlNet: at initialisation the zero convolutions give exactly the base's output;
    # after training the edge map changes the samples, which have the control's size.
    assert ns["zero_conv_gap"] == 0.0
    assert np.abs(np.asarray(ns["without"])).max() > 0
    assert int(ns["controlnet_state"].step) == steps["controlnet"]
    controls = np.asarray(ns["controls"])
    assert controls.shape == (4, 28, 28, 1) and set(np.unique(controls)) <= {0.0, 1.0}
    first, second = ns["controlled_samples"][0], ns["controlled_samples"][1]
    for samples in (first, second):
        _finite_images(samples, (num_samples // 2, *controls.shape[1:]), clipped=False)
    assert np.abs(first - second).max() > 0
    zero_convs = ns["controlnet_run"].state.ema_params["controlnet_mid"]["kernel"]
    assert np.abs(np.asarray(zero_convs)).max() > 0  # trained away from zero

    # 6. LoRA: the state is a small fraction of the base; sample_run of the LoRA run equals the
    # merged weights sampled by hand, and differs from the base model's samples.
    assert int(ns["lora_state"].step) == steps["lora"]
    assert 0 < ns["lora_count"] < ns["base_count"] / 10
    leaves = jax.tree.leaves(ns["lora_params"])
    assert leaves and sum(leaf.size for leaf in leaves) == ns["lora_count"]
    _finite_images(ns["lora_samples"], shape, clipped=False)
    assert ns["lora_gap"] <= 1e-5
    assert np.abs(ns["lora_samples"] - ns["unguided"]).max() > 0

    # 7. Stable Diffusion from the tiny folder: images of the requested size, one per prompt.
    size = ns["SD_SIZE"]
    _finite_images(ns["sd_images"], (len(ns["SD_PROMPTS"]), size, size, 3))
