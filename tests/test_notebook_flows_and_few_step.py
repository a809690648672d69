"""colab/flows_and_few_step.ipynb runs top to bottom on the CPU in its small setting
(tests/test_notebooks.py's module docstring): the rectified flow and EDM train to their step,
reflow and progressive distillation run their stages, and every model and sampler of the
FD-FMNIST table gets a finite score and a grid of the right shape."""

from __future__ import annotations

import json

import numpy as np
from notebook_support import COLAB_DIR, NUM_TEST_IMAGES, run_notebook

from diffjax import metrics
from diffjax.training.metrics_writer import read_metrics


def test_flows_and_few_step_runs_small(notebook_env, unoptimized):
    ns = run_notebook(COLAB_DIR / "flows_and_few_step.ipynb")
    train_steps, reflow_settings = ns["TRAIN_STEPS"], ns["REFLOW"]
    runs = notebook_env / ns["RUNS"]

    # The two recipes, each trained to its step: a rectified flow and EDM, with finite losses
    # logged up to the last step and a checkpoint there.
    assert ns["flow_config"].diffusion.process == "rectified_flow"
    assert ns["edm_config"].diffusion.process == "edm"
    for name, state, workdir in [("rectified flow", ns["flow_state"], ns["FLOW_DIR"]),
                                 ("EDM", ns["edm_state"], ns["EDM_DIR"])]:  # fmt: skip
        assert int(state.step) == train_steps, name
        losses = ns["losses"][name]
        assert losses[-1, 0] == train_steps and np.all(np.isfinite(losses[:, 1])), name
        saved = [int(p.name) for p in (notebook_env / workdir / "checkpoints").iterdir()
                 if p.name.isdigit()]  # fmt: skip
        assert max(saved) == train_steps, name

    # Reflow: every pair written, the student trained from the flow to its step, and the
    # report's straightness and one-step distances finite (what they show needs the full run).
    report = ns["reflow_report"]
    assert report["mode"] == "reflow"
    assert report["teacher_step"] == train_steps
    assert report["student_step"] == reflow_settings["train_steps"]
    assert report["pairs"]["num_pairs"] == reflow_settings["num_pairs"]
    with open(runs / "flow_2rf" / "config.json") as f:
        training = json.load(f)["config"]["training"]
    assert training["init_from"] == str((runs / "flow").resolve())
    for value in (*report["straightness"].values(), *report["one_step_distance"].values()):
        if isinstance(value, float):
            assert np.isfinite(value) and value >= 0
    assert report["straightness"]["student"] > 0 and report["one_step_distance"]["student"] > 0

    # Progressive distillation: rounds of 4, 2 and 1 steps, each trained to its step count,
    # each teacher the previous round's student.
    rounds = ns["distill_report"]["rounds"]
    assert [r["steps"] for r in rounds] == [4, 2, 1]
    assert all(r["train_steps"] == ns["DISTILL_STEPS_PER_ROUND"] for r in rounds)
    assert rounds[0]["teacher"] == str((runs / "flow").resolve())
    for previous, current in zip(rounds, rounds[1:]):
        assert current["teacher"] == str((runs / "flow_pd" / previous["folder"]).resolve())
    loaded = ns["loaded_runs"]
    for steps in (4, 1):
        student = loaded[ns["students"][steps]]
        assert student.step == ns["DISTILL_STEPS_PER_ROUND"]
        # Its own sampler: DDIM on its N-step grid.
        assert student.config["sampling"]["sampler"] == "ddim"
        assert student.config["sampling"]["num_steps"] == steps

    # The table: one row per model and sampler, each with FD_SAMPLES finite samples and a
    # finite FD that the features give again when fitted in one go rather than streamed.
    results, num_samples = ns["results"], ns["FD_SAMPLES"]
    assert [(r["name"].split(",")[0], r["steps"]) for r in results] == [
        ("rectified flow", ns["FLOW_EULER_STEPS"]), ("rectified flow", 4), ("rectified flow", 1),
        ("EDM", ns["EDM_HEUN_STEPS"]), ("2-rectified flow", 1), ("distilled", 4),
        ("distilled", 1),
    ]  # fmt: skip
    assert [r["sampler"] for r in results[-2:]] == ["ddim", "ddim"]
    assert ns["reference_moments"].count == min(ns["FD_REFERENCE_IMAGES"], NUM_TEST_IMAGES)
    reference = ns["reference_statistics"]
    for result in results:
        samples = result["samples"]
        assert samples.shape == (num_samples, 28, 28, 1), result["name"]
        assert np.all(np.isfinite(samples)), result["name"]
        assert np.isfinite(result["fd"]) and result["fd"] > 0, result["name"]
        features = ns["fmnist_features"](samples)
        at_once = metrics.frechet_distance(metrics.statistics_from_features(features), reference)
        np.testing.assert_allclose(result["fd"], at_once, rtol=1e-4)
    # Different models give different samples from the same noise.
    assert not np.allclose(results[0]["samples"], results[3]["samples"])
    assert not np.allclose(results[5]["samples"], results[6]["samples"])

    # The grids, side by side: GRID_SAMPLES 28x28 tiles each, in a 4x4 grid with 2-pixel borders.
    assert ns["GRID_SAMPLES"] == 16
    grids = ns["grids"]
    assert len(grids) == len(results) == len(ns["fig"].axes)
    for grid in grids:
        assert grid.shape == (4 * 30 + 2, 4 * 30 + 2, 1) and grid.dtype == np.uint8

    # The loss records are the run's own: the training program's metrics.jsonl.
    flow_records = [r for r in read_metrics(runs / "flow" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in flow_records] == list(ns["losses"]["rectified flow"][:, 0])
