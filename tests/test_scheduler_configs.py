"""diffusers scheduler configs as diffjax schedules and samplers
(diffjax/pipelines/scheduler_configs.py), and the published unconditional models they sample
(diffjax/pipelines/unconditional.py) against diffusers' DDIM on the same random UNet."""

import json
import os

import numpy as np
import pytest

from diffjax.errors import ConfigError
from diffjax.pipelines import sample_pretrained
from diffjax.pipelines.scheduler_configs import (
    checked_sampler,
    sampler_from_scheduler_config,
    schedule_from_scheduler_config,
)
from diffjax.samplers.ddim import ddim_plan

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _config(path: str) -> dict:
    with open(os.path.join(FIXTURES, path)) as file:
        return json.load(file)


def test_sd_ddim_config_visits_diffusers_timesteps_and_ends_at_timestep_zero():
    config = _config("tiny_sd/scheduler/scheduler_config.json")
    schedule = schedule_from_scheduler_config(config)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD's scaled_linear
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-6)
    name, options = sampler_from_scheduler_config(config)
    assert name == "ddim" and options["prediction_type"] == "eps" and not options["clip_x0"]
    options.pop("clip_x0")  # the runner's option, not the plan's
    grid = ddim_plan(schedule, num_steps=4, **options).grid
    # diffusers' 'leading' grid with steps_offset=1: arange(4)[::-1] * 250 + 1.
    np.testing.assert_array_equal(grid.time[:-1], [751, 501, 251, 1])
    # set_alpha_to_one=False: the last step lands on timestep 0's noise level.
    np.testing.assert_allclose(grid.alpha[-1] ** 2, schedule.alphas_cumprod[0], rtol=1e-6)


def test_ddpm_config_grid_is_the_one_diffusers_ddim_visited():
    config = _config("ddpm_unet/scheduler_config.json")
    name, options = sampler_from_scheduler_config(config)
    assert name == "ddpm" and options["clip_x0"]  # DDPMScheduler clips by default
    name, options = sampler_from_scheduler_config(config, "ddim")
    options.pop("clip_x0")
    grid = ddim_plan(schedule_from_scheduler_config(config), num_steps=10, **options).grid
    expected = np.load(os.path.join(FIXTURES, "ddpm_unet", "outputs.npz"))["ddim_timesteps"]
    np.testing.assert_array_equal(grid.time[:-1], expected)


def test_ddpm_unet_samples_as_diffusers_ddim():
    reference = np.load(os.path.join(FIXTURES, "ddpm_unet", "outputs.npz"))
    images = sample_pretrained(
        os.path.join(FIXTURES, "ddpm_unet"), steps=10, sampler="ddim", noise=reference["noise"]
    )
    # float32 rounding through 10 clipped steps of a random UNet (measured 3.4e-5 in [-1, 1]).
    np.testing.assert_allclose(images, np.clip(reference["ddim_sample"], -1, 1), atol=2e-4)


@pytest.mark.parametrize(
    "update, sampler, expected",
    [
        (dict(_class_name="PNDMScheduler"), "ddim", dict(steps_offset=1)),
        (dict(_class_name="DPMSolverMultistepScheduler", solver_order=3), "dpm_solver",
         dict(order=3)),
        (dict(prediction_type="v_prediction"), "ddim", dict(prediction_type="v")),
    ],
)  # fmt: skip
def test_scheduler_classes_and_prediction_types_map(update, sampler, expected):
    config = dict(_config("tiny_sd/scheduler/scheduler_config.json"), **update)
    name, options = sampler_from_scheduler_config(config)
    assert name == sampler
    assert {key: options[key] for key in expected} == expected


@pytest.mark.parametrize(
    "update, named",
    [
        (dict(_class_name="LCMScheduler"), "LCMScheduler"),
        (dict(thresholding=True), "thresholding"),
        (dict(beta_schedule="exponential"), "exponential"),
    ],
)
def test_what_diffjax_cannot_reproduce_is_named(update, named):
    config = dict(_config("tiny_sd/scheduler/scheduler_config.json"), **update)
    with pytest.raises(ConfigError, match=named):
        checked_sampler(config, None, None, 10)
