"""What a user's own module registers, as a config names it in ``config.imports``.

The tests import it by name (``config.imports = ('user_extensions',)``, with the tests folder on
the path) to check that the registries are open: a sampler, a network that reads a ``context``
sequence and a ``control`` image, a dataset that carries them, a codec, and two objectives (one
with two parameter groups, one that regresses onto a frozen teacher).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax import codecs, samplers
from diffjax.data import pipeline
from diffjax.models import ModelEntry, make_model_fn, register_model
from diffjax.samplers.grids import make_grid, uniform_times
from diffjax.samplers.runner import Plan
from diffjax.samplers.steps import ddim_step
from diffjax.training import objectives

# ------------------------------------------------------------------------------- sampler


def _x0_body(model, process, x, carry, step, noise_key, settings, options):
    _, x0, eps = settings.denoise(model, step.current, x)
    nxt = step.next.marginal
    return ddim_step(x0, eps, nxt.alpha, nxt.sigma), carry, x0


def squared_grid_plan(process: Any, *, num_steps: int = 8, prediction_type: str) -> Plan:
    """Deterministic DDIM on a continuous grid t_k = (1 - k / S)^2 (denser near the data)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    grid = make_grid(process, uniform_times(num_steps, t_max=1.0) ** 2)
    return Plan(
        body=_x0_body,
        grid=grid,
        coefficients={},
        prediction_type=prediction_type,
        variance_preserving=process.variance_preserving,
        start_scale=float(grid.sigma[0]),
    )


samplers.register_sampler("squared_ddim", squared_grid_plan, deterministic=True)

# ------------------------------------------------------------------------------- network

CONTEXT_SHAPE = (3, 4)  # [L, D]


class ToyCondNet(nn.Module):
    """A small network conditioned on ``cond['context']`` [B, L, D] (pooled into a bias) and
    ``cond['control']`` [B, H, W, C] (concatenated to its input); null condition: zeros."""

    features: int = 8

    @property
    def cond_keys(self) -> tuple[str, ...]:
        return ("context", "control")

    def null_cond(self, cond: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
        return {key: jnp.zeros_like(cond[key]) for key in self.cond_keys}

    @nn.compact
    def __call__(self, x, t, cond, train=False):
        t = jnp.asarray(t, jnp.float32)[:, None, None, None] / 1000.0
        h = jnp.concatenate([x, cond["control"], jnp.broadcast_to(t, x.shape[:-1] + (1,))], -1)
        h = nn.gelu(nn.Conv(self.features, (3, 3))(h))
        bias = nn.Dense(self.features)(cond["context"].mean(axis=1))
        h = nn.gelu(h + bias[:, None, None, :])
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)


def _toy_defaults() -> dict[str, Any]:
    return dict(features=8)


def _check_toy_input(module: nn.Module, shape: tuple[int, ...]) -> None:
    if len(shape) not in (2, 3):
        raise ValueError(f"toy_cond takes images (H, W, C), got {shape}.")


register_model(
    "toy_cond",
    ModelEntry(
        defaults=_toy_defaults,
        build=lambda config: ToyCondNet(features=config["features"]),
        check_input_shape=_check_toy_input,
        state_keys=("features",),
    ),
)

# ------------------------------------------------------------------------------- dataset


def toy_cond_arrays(split: str, image_size: int) -> tuple[dict[str, Any], None]:
    """64 images whose pixels are the control image plus the context's mean, with noise."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    count = 64
    control = rng.uniform(-0.5, 0.5, (count, image_size, image_size, 1)).astype(np.float32)
    context = rng.normal(size=(count, *CONTEXT_SHAPE)).astype(np.float32)
    images = control + 0.3 * context.mean(axis=(1, 2))[:, None, None, None]
    images = np.clip(images + 0.05 * rng.normal(size=images.shape), -1, 1).astype(np.float32)
    return {"image": images, "cond": {"context": context, "control": control}}, None


pipeline.register_dataset("toy_cond_data", toy_cond_arrays)

# --------------------------------------------------------------------------------- codec


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class SpaceToDepth:
    """An exact, orthogonal codec: each 2x2 block of pixels becomes 4 channels (and back)."""

    name = "space_to_depth"
    clip = False

    def latent_shape(self, image_shape):
        height, width, channels = image_shape
        if height % 2 or width % 2:
            raise ValueError(f"space_to_depth needs even sides, got {image_shape}.")
        return (height // 2, width // 2, 4 * channels)

    def encode(self, params, images, key):
        b, h, w, c = images.shape
        blocks = images.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
        return blocks.reshape(b, h // 2, w // 2, 4 * c)

    def decode(self, params, latents):
        b, h, w, c4 = latents.shape
        c = c4 // 4
        blocks = latents.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
        return blocks.reshape(b, 2 * h, 2 * w, c)

    def frozen_source(self):
        return None


codecs.register_codec("space_to_depth", SpaceToDepth)

# ---------------------------------------------------------------------------- objectives


def _partly_frozen_labels(params: Any) -> Any:
    """The time embedding is frozen; the output convolution is a group of its own."""

    def label(path, _):
        top = path[0].key
        if top == "time_embedding":
            return objectives.FROZEN_GROUP
        return "head" if top == "conv_out" else "body"

    return jax.tree_util.tree_map_with_path(label, params)


def _build_partly_frozen(context: objectives.ObjectiveContext) -> objectives.Objective:
    denoising = objectives.OBJECTIVES["denoising"].build(context)
    return denoising._replace(
        param_labels=_partly_frozen_labels,
        group_options={"head": {"learning_rate": 1e-4}},
    )


objectives.register_objective(
    "partly_frozen",
    objectives.ObjectiveEntry(
        defaults=dict,
        check=lambda values: None,
        build=_build_partly_frozen,
        frozen=lambda values: {},
        hooks=("held_out_loss",),
    ),
)


def _build_teacher_regression(context: objectives.ObjectiveContext) -> objectives.Objective:
    """The student regresses onto the frozen teacher's prediction at the same (x_t, t)."""
    student, teacher = context.model, context.frozen_modules["teacher"]

    def loss_fn(params, frozen, batch, key, train):
        x = batch["image"]
        t = jax.random.randint(key, (x.shape[0],), 0, 1000)
        target = make_model_fn(teacher, frozen["teacher"])(x, t)
        prediction = make_model_fn(student, params)(x, t)
        mse = jnp.mean(jnp.square(prediction - target))
        return mse, {"mse": mse}

    return objectives.Objective(loss_fn)


def _check_teacher(values: Mapping[str, Any]) -> None:
    from diffjax.errors import ConfigError

    if not values["objective"]["teacher"]:
        raise ConfigError("config.objective.teacher must name a trained workdir.")


objectives.register_objective(
    "teacher_regression",
    objectives.ObjectiveEntry(
        defaults=lambda: dict(teacher=""),
        check=_check_teacher,
        build=_build_teacher_regression,
        frozen=lambda values: {"teacher": {"workdir": values["objective"]["teacher"]}},
        hooks=("held_out_loss",),
        state_keys=("teacher",),
    ),
)
