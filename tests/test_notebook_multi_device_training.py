"""colab/multi_device_training.ipynb runs top to bottom on 8 CPU devices in its small setting.

The notebook trains a tiny UNet data-parallel, resumes it, counts its FLOPs, samples it and
scores it (FD-FMNIST against the offline Fashion-MNIST slice), then trains a tiny DiT with FSDP
over the 8 devices and resumes that too. The test checks what the notebook prints: the resumed
step counts, the logged metrics, the split state, the FLOP counts and the score.
"""

from __future__ import annotations

import jax
import numpy as np
from notebook_support import COLAB_DIR, NUM_TEST_IMAGES, run_notebook

from diffjax import metrics
from diffjax.training.metrics_writer import read_metrics

NOTEBOOK = COLAB_DIR / "multi_device_training.ipynb"


def test_multi_device_training_runs_small(notebook_env, unoptimized, capsys):
    steps_seen = {"unet_state": [], "dit_state": []}

    def after_cell(index, namespace):
        for name, seen in steps_seen.items():
            state = namespace.get(name)
            if state is not None and (not seen or seen[-1] != int(state.step)):
                seen.append(int(state.step))

    ns = run_notebook(NOTEBOOK, after_cell)
    err = capsys.readouterr().err
    assert jax.device_count() == 8 and ns["ACCELERATOR"] == "CPU"
    num_steps, extra = ns["NUM_STEPS"], ns["EXTRA_STEPS"]
    dit_steps, dit_extra = ns["DIT_STEPS"], ns["DIT_EXTRA_STEPS"]
    assert extra > 0 and dit_extra > 0

    # Both runs trained to N, then resumed (not restarted) from N to the raised step count.
    assert steps_seen["unet_state"] == [num_steps, num_steps + extra]
    assert steps_seen["dit_state"] == [dit_steps, dit_steps + dit_extra]
    assert f"resuming at step {num_steps}" in err and f"resuming at step {dit_steps}" in err

    for workdir, total in (
        (notebook_env / ns["UNET_WORKDIR"], num_steps + extra),
        (notebook_env / ns["DIT_WORKDIR"], dit_steps + dit_extra),
    ):
        records = [r for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r]
        logged = [r["step"] for r in records]
        # One record per logged step: the resumed session appended after the first, from N on.
        assert logged == sorted(set(logged)) and logged[-1] == total, logged
        assert all(np.isfinite(r["loss"]) and r["images_per_second"] > 0 for r in records)
        saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
        assert saved[-1] == total
    assert ns["unet_checkpoints"][-1] == num_steps + extra
    assert [r["step"] for r in ns["unet_records"]][-1] == num_steps + extra

    # Data parallel: the UNet's state is whole on every device. FSDP: the DiT's is split over
    # the 8 devices, apart from the few small arrays (biases of odd size, scalars) no axis divides.
    unet_total, unet_first = ns["state_bytes"](ns["unet_state"])
    dit_total, dit_first = ns["state_bytes"](ns["dit_state"])
    assert unet_first == unet_total
    assert dit_first < 0.2 * dit_total
    kernel = max(jax.tree.leaves(ns["dit_state"].params), key=lambda leaf: leaf.size)
    assert len(kernel.sharding.device_set) == 8
    assert kernel.addressable_shards[0].data.size * 8 == kernel.size

    # FLOP rate: XLA's counts, the backward pass about twice the forward, and the rate is the
    # count over the step time the loop logged.
    for name, workdir in (("unet_rate", ns["UNET_WORKDIR"]), ("dit_rate", ns["DIT_WORKDIR"])):
        rate = ns[name]
        assert 0 < rate["forward"] < rate["flops"]
        assert 2.0 <= rate["flops"] / rate["forward"] <= 4.0, rate
        records = [r for r in read_metrics(notebook_env / workdir / "metrics.jsonl") if "loss" in r]
        seconds = ns["BATCH_SIZE"] / records[-1]["images_per_second"]
        np.testing.assert_allclose(rate["seconds"], seconds)
        np.testing.assert_allclose(rate["rate"], rate["flops"] / seconds)

    # Samples: the shape of the data, finite, in [-1, 1] (x0 clipped), and not all alike.
    size = ns["IMAGE_SIZE"]
    for name in ("samples", "dit_samples"):
        samples = np.asarray(ns[name])
        assert samples.shape == (ns["NUM_SAMPLES"], size, size, 1), name
        assert np.all(np.isfinite(samples)) and np.all(np.abs(samples) <= 1.0 + 1e-6), name
        assert samples.std() > 0, name

    # FD-FMNIST: every sample and every test image of the slice is in the moments, and the
    # streamed moments give the same distance as the features of all samples at once.
    network, reference = ns["network"], ns["reference"]
    assert network.name == "fmnist"
    assert ns["sample_moments"].count == ns["FD_NUM_SAMPLES"]
    assert reference.count == NUM_TEST_IMAGES
    fd = ns["fd"]
    assert np.isfinite(fd) and fd > 0
    all_at_once = metrics.frechet_distance(
        metrics.statistics_from_features(ns["features_of"](ns["fd_samples"])), reference
    )
    np.testing.assert_allclose(all_at_once, fd, rtol=1e-6)
    # The cached reference reads back as the statistics the notebook computed.
    cached, _ = metrics.load_statistics(notebook_env / ns["reference_path"])
    np.testing.assert_allclose(cached.mu, reference.mu)
