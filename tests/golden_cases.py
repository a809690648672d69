"""The cases of the 0.1.0 regression fixture (tests/make_golden_samples.py, tests/test_golden.py).

A deterministic nonlinear stand-in for a network (so every prediction type's conversion and
every sampler branch is exercised), the three samplers with their main options, the denoising
loss for each prediction type and weighting, and three steps of a tiny UNet's train step. The
calls are written in the current API; the fixture holds what 0.1.0 returned for them.
"""

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from diffjax.training import (
    create_train_state,
    jit_train_step,
    make_denoising_loss,
    make_mesh,
    make_optimizer,
    make_train_step,
)

SHAPE = (4, 8, 8, 2)


def toy_model(x_t, t):
    """A smooth, t-dependent map of x_t: enough to make every sampler's arithmetic matter."""
    scale = 0.6 + 0.3 * jnp.cos(t.astype(jnp.float32) / 250.0)
    return scale[:, None, None, None] * jnp.tanh(x_t) + 0.05 * jnp.sin(3.0 * x_t)


def sampler_cases():
    """(name, schedule, sampler name, options) for every recorded sampler run."""
    linear = dj.get_schedule("linear", 1000)
    cosine = dj.get_schedule("cosine", 1000)
    ztsnr = dj.get_schedule("linear", 1000, zero_terminal_snr=True)
    return [
        ("ddpm_all_eps", linear, "ddpm", dict(prediction_type="eps")),
        (
            "ddpm_50_large_clip",
            cosine,
            "ddpm",
            dict(num_steps=50, variance="large", clip_x0=True, prediction_type="eps"),
        ),
        ("ddpm_ztsnr_v", ztsnr, "ddpm", dict(num_steps=20, prediction_type="v")),
        ("ddim_50_eps", linear, "ddim", dict(num_steps=50, prediction_type="eps")),
        ("ddim_20_eta_half_v", cosine, "ddim", dict(num_steps=20, eta=0.5, prediction_type="v")),
        (
            "ddim_ztsnr_trailing_v",
            ztsnr,
            "ddim",
            dict(num_steps=10, spacing="trailing", prediction_type="v"),
        ),
        ("ddim_10_x0_clip", linear, "ddim", dict(num_steps=10, prediction_type="x0", clip_x0=True)),
        ("dpm_20_eps", cosine, "dpm_solver", dict(num_steps=20, prediction_type="eps")),
        ("dpm_10_v", linear, "dpm_solver", dict(num_steps=10, prediction_type="v")),
        (
            "dpm_15_karras_x0",
            linear,
            "dpm_solver",
            dict(num_steps=15, spacing="karras", prediction_type="x0"),
        ),
        (
            "dpm_8_order1_eps",
            cosine,
            "dpm_solver",
            dict(num_steps=8, order=1, prediction_type="eps"),
        ),
    ]


def loss_cases():
    return [
        (f"loss_{prediction}_{weighting}", prediction, weighting)
        for prediction in ("eps", "x0", "v")
        for weighting in ("uniform", "min_snr")
    ]


def compute_samplers():
    out = {}
    key = jax.random.key(7)
    for name, schedule, sampler, options in sampler_cases():
        out[name] = np.asarray(dj.sample(sampler, toy_model, schedule, key, SHAPE, **options))
    return out


def compute_losses():
    out = {}
    schedule = dj.get_schedule("cosine", 1000)
    x0 = jax.random.uniform(jax.random.key(1), SHAPE, minval=-1.0, maxval=1.0)
    for name, prediction, weighting in loss_cases():
        loss, aux = dj.denoising_loss(
            toy_model, schedule, x0, jax.random.key(2), prediction_type=prediction,
            weighting=weighting, offset_noise=0.1,
        )  # fmt: skip
        out[name] = np.asarray(aux["loss"])
        out[name + "_t"] = np.asarray(aux["t"])
    return out


def compute_train_steps():
    """Three steps of a tiny UNet on fixed data, one device, with v-prediction and Min-SNR and
    with eps-prediction and the uniform loss: the losses and the final params."""
    return {
        **_train_steps("train", prediction_type="v", weighting="min_snr"),
        **_train_steps("train_uniform_eps", prediction_type="eps", weighting="uniform"),
    }


def _train_steps(prefix, **loss_options):
    model = dj.UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                    dropout=0.1, num_groups=4)  # fmt: skip
    schedule = dj.get_schedule("cosine", 1000)
    optimizer = make_optimizer(1e-3, warmup_steps=1)
    mesh = make_mesh(jax.devices()[:1])

    def init(key):
        return model.init(key, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32))["params"]

    state = create_train_state(init, jax.random.key(0), optimizer, mesh)
    initial = np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(state.params)])
    loss_fn = make_denoising_loss(model, schedule, **loss_options)
    step = jit_train_step(make_train_step(loss_fn, optimizer), mesh)
    images = jax.random.uniform(jax.random.key(3), (8, 8, 8, 1), minval=-1.0, maxval=1.0)
    losses = []
    for _ in range(3):
        state, metrics = step(state, {"image": np.asarray(images)}, jax.random.key(4))
        losses.append(float(metrics["loss"]))
    leaves = jax.tree.leaves(state.params)
    return {
        f"{prefix}_losses": np.asarray(losses),
        f"{prefix}_params_flat": np.concatenate([np.asarray(leaf).ravel() for leaf in leaves]),
        f"{prefix}_initial_params_flat": initial,
    }


def compute_all():
    return {**compute_samplers(), **compute_losses(), **compute_train_steps()}
