"""Configs: every shipped config is complete and valid; every kind of bad config is a clear error.

No network is built here: validation is pure Python and must reject bad configs before
anything compiles. Each error must name the offending key and what is allowed.
"""

import importlib
import pathlib
import re
import runpy

import pytest

from diffjax import configs as recipes
from diffjax.errors import ConfigError, ConfigTypeError
from diffjax.training.config import (
    RESUME_KEYS,
    base_config,
    config_schema,
    config_to_dict,
    resume_conflicts,
    schema_of,
    upgrade_config,
)
from diffjax.training.programs import validate_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"  # the command line's files, one per recipe
RECIPE_DIR = REPO / "diffjax" / "configs"
CONFIG_NAMES = recipes.RECIPES


def load(name):
    return recipes.get_config(name)


def schema_keys(schema, prefix=""):
    keys = set()
    for key, kind in schema.items():
        keys |= schema_keys(kind, f"{prefix}{key}.") if isinstance(kind, dict) else {prefix + key}
    return keys


def config_keys(values, schema, prefix=""):
    """The keys of ``values`` down to the schema's leaves (option mappings are leaves)."""
    keys = set()
    for key, value in values.items():
        kind = schema.get(key)
        if isinstance(kind, dict):
            keys |= config_keys(value, kind, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_every_recipe_has_its_command_line_file_and_nothing_else_is_there():
    every = CONFIG_NAMES + recipes.DISTILL_RECIPES
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.py")) == sorted(every)
    recipe_files = sorted(p.stem for p in RECIPE_DIR.glob("*.py") if p.stem != "__init__")
    assert recipe_files == sorted(every)


@pytest.mark.parametrize("name", CONFIG_NAMES + recipes.DISTILL_RECIPES)
def test_the_command_line_file_gives_the_packaged_recipe(name):
    from_file = runpy.run_path(str(CONFIG_DIR / f"{name}.py"))["get_config"]()
    assert config_to_dict(from_file) == config_to_dict(load(name))


def test_an_unknown_recipe_is_named():
    with pytest.raises(ValueError, match="Unknown recipe 'fashion'; the recipes are"):
        recipes.get_config("fashion")


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("num_devices", [1, 8])
def test_shipped_configs_are_valid_and_complete(name, num_devices):
    config = load(name)
    if config.codec.name == "autoencoder":
        # A latent recipe needs its autoencoder: the port fixture's diffusers folder stands in
        # (it halves images once; attention at the latents' side).
        from diffjax.weights import sha256_of_file

        fixture = REPO / "tests" / "fixtures" / "autoencoder_kl"
        config.codec.options.workdir = ""
        config.codec.options.diffusers = str(fixture)
        config.codec.options.sha256 = sha256_of_file(
            fixture / "diffusion_pytorch_model.safetensors"
        )
        config.model.attn_resolutions = (config.data.image_size // 2,)
    values = validate_config(config, num_devices=num_devices)
    schema = config_schema(values)
    assert config_keys(values, schema) == schema_keys(schema)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_the_commands_in_config_docstrings_name_this_file_and_real_keys(name):
    """Every ``--config.KEY=VALUE`` that a config's docstring tells users to type names a key of
    that config, and its train command names the file itself."""
    doc = importlib.import_module(f"diffjax.configs.{name}").__doc__
    assert f"python -m diffjax.train --config configs/{name}.py" in doc
    config = load(name)
    for key, value in re.findall(r"--config\.([\w.]+)=(\S+)", doc):
        section, _, leaf = key.rpartition(".")
        node = config
        for part in filter(None, section.split(".")):
            node = node[part]
        assert leaf in node, f"configs/{name}.py's docstring overrides {key}, which it lacks"
        node[leaf] = type(node[leaf])(value.rstrip(".,")) if node[leaf] is not None else value


def test_config_specific_choices():
    names = ("fashion_mnist", "cifar10", "cifar10_cond", "test")
    fmnist, cifar, cond, test = (load(name) for name in names)
    assert fmnist.data.name == "fashion_mnist" and fmnist.data.image_size == 28
    # The DDPM paper's CIFAR-10 recipe (Ho et al. 2020, Appendix B).
    assert (cifar.model.base_channels, tuple(cifar.model.channel_mults)) == (128, (1, 2, 2, 2))
    assert (cifar.optim.learning_rate, cifar.optim.warmup_steps, cifar.data.batch_size) == (
        2e-4, 5000, 128)  # fmt: skip
    assert (cifar.training.num_steps, cifar.model.dropout, cifar.optim.ema_decay) == (
        800_000, 0.1, 0.9999)  # fmt: skip
    assert cifar.data.random_flip
    assert cond.model.num_classes == 10 and cond.training.cond_dropout > 0
    assert cond.sampling.guidance_scale > 1
    assert test.training.num_steps <= 10 and test.model.base_channels <= 8


def test_ddpm_cifar10_unet_has_35_7m_parameters():
    import jax
    import jax.numpy as jnp

    from diffjax.models import build_model
    from diffjax.models.unet import count_params

    values = validate_config(load("cifar10"))
    model = build_model(values["model"])
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32)
    )
    assert round(count_params(shapes["params"]) / 1e6, 1) == 35.7


def broken(**changes):
    config = load("test")
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        target = config[section] if section else config
        with target.ignore_type():
            target[key] = value
    return config


BAD_CONFIGS = {
    "unknown key with suggestion": (
        lambda: broken(**{"training.num_stepz": 3}),
        ConfigError,
        r"Unknown config key 'training.num_stepz'.*Did you mean 'training.num_steps'",
    ),
    "unknown section": (lambda: broken(optimizer=1), ConfigError, "Unknown config key 'optimizer'"),
    "string for an int": (
        lambda: broken(**{"training.num_steps": "100"}),
        ConfigTypeError,
        "config.training.num_steps must be int, got '100'",
    ),
    "bool for an int": (
        lambda: broken(**{"data.batch_size": True}),
        ConfigTypeError,
        "config.data.batch_size must be int",
    ),
    "float for a tuple": (
        lambda: broken(**{"model.channel_mults": 2.0}),
        ConfigTypeError,
        "config.model.channel_mults must be tuple of int",
    ),
    "image size the UNet cannot halve": (
        lambda: broken(**{"data.image_size": 9}),
        ConfigError,
        r"config.model \(unet\) does not fit config.data.image_size=9.*multiple of 2",
    ),
    "attention resolution that never occurs": (
        lambda: broken(**{"model.attn_resolutions": (16,)}),
        ConfigError,
        r"attn_resolutions \(16,\) never occur",
    ),
    "groups not dividing channels": (
        lambda: broken(**{"model.num_groups": 3}),
        ConfigError,
        "num_groups=3 must divide",
    ),
    "guidance without classes": (
        lambda: broken(**{"sampling.guidance_scale": 3.0}),
        ConfigError,
        "guidance_scale=3.0 asks for classifier-free guidance.*conditional network",
    ),
    "guidance without condition dropout": (
        lambda: broken(**{"sampling.guidance_scale": 3.0, "model.num_classes": 2}),
        ConfigError,
        "needs the unconditional model that config.training.cond_dropout > 0",
    ),
    "condition dropout without classes": (
        lambda: broken(**{"training.cond_dropout": 0.1}),
        ConfigError,
        "cond_dropout=0.1 drops the condition, but the network reads none",
    ),
    "unknown objective": (
        lambda: broken(**{"objective.name": "gan"}),
        ConfigError,
        r"config.objective.name: Unknown objective 'gan'; expected one of \('denoising'",
    ),
    "unknown codec": (
        lambda: broken(**{"codec.name": "vae"}),
        ConfigError,
        r"config.codec \('vae'\): Unknown codec 'vae'",
    ),
    "mesh axes of another kind": (
        lambda: broken(**{"sharding.mesh_axes": ("model",)}),
        ConfigError,
        r"config.sharding: mesh axes \['model'\] are not supported",
    ),
    "fsdp without its axis": (
        lambda: broken(**{"sharding.rules": "fsdp"}),
        ConfigError,
        r"rules='fsdp' splits the state over a mesh axis named 'fsdp'",
    ),
    "unknown sharding rules": (
        lambda: broken(**{"sharding.rules": "zero3"}),
        ConfigError,
        r"config.sharding.rules must be one of \('replicated',",
    ),
    "unknown schedule": (
        lambda: broken(**{"diffusion.schedule": "cosinus"}),
        ConfigError,
        r"config.diffusion.schedule must be one of \('linear'",
    ),
    "unknown sampler": (
        lambda: broken(**{"sampling.sampler": "lms"}),
        ConfigError,
        "config.sampling.sampler must be one of",
    ),
    "sampler option out of range (checked by the sampler, before training)": (
        lambda: broken(**{"sampling.options": {"eta": 1.5}}),
        ConfigError,
        r"config.sampling \(sampler 'ddim'.*eta must be in \[0, 1\].*got 1.5",
    ),
    "option of another sampler": (
        lambda: broken(**{"sampling.sampler": "dpm_solver", "sampling.options": {"eta": 0.5}}),
        ConfigError,
        r"Sampler 'dpm_solver' does not take \['eta'\]",
    ),
    "flow sampler on a discrete schedule": (
        lambda: broken(**{"sampling.sampler": "flow_euler"}),
        ConfigError,
        "flow samplers integrate dx/dt = v in continuous time",
    ),
    "unknown process": (
        lambda: broken(**{"diffusion.process": "vp"}),
        ConfigError,
        r"config.diffusion.process must be one of \('discrete', 'vp_linear'",
    ),
    "unknown process option": (
        lambda: broken(**{"diffusion.process": "edm", "diffusion.process_options": {"sigma": 3.0}}),
        ConfigError,
        r"Process 'edm' does not take \['sigma'\]",
    ),
    "velocity prediction on a discrete schedule": (
        lambda: broken(**{"diffusion.prediction_type": "flow"}),
        ConfigError,
        "'flow' .* needs a continuous process",
    ),
    "time sampler a schedule cannot use": (
        lambda: broken(**{"diffusion.time_sampler": "logit_normal"}),
        ConfigError,
        r"a discrete schedule draws t ~ U\{0, ..., T-1\}",
    ),
    "bad time sampler option": (
        lambda: broken(
            **{
                "diffusion.process": "rectified_flow",
                "diffusion.time_sampler": "logit_normal",
                "diffusion.time_sampler_options": {"std": -1.0},
                "sampling.sampler": "flow_euler",
            }
        ),
        ConfigError,
        "std must be > 0",
    ),
    "float16 without loss scaling": (
        lambda: broken(**{"model.param_dtype": "float16"}),
        ConfigError,
        r"config.model.param_dtype='float16' needs loss scaling",
    ),
    "unknown model": (
        lambda: broken(**{"model.name": "sdxl_unet"}),
        ConfigError,
        r"config.model.name: Unknown model 'sdxl_unet'; expected one of \('unet',",
    ),
    "unknown nan policy": (
        lambda: broken(**{"training.nan_policy": "ignore"}),
        ConfigError,
        r"must be one of \('stop', 'skip'\)",
    ),
    "more sampling steps than timesteps": (
        lambda: broken(**{"sampling.num_steps": 2000}),
        ConfigError,
        r"config.sampling \(sampler 'ddim', num_steps 2000.*num_steps must be in \[1, T=1000\]",
    ),
    "cosine decay shorter than warm-up": (
        lambda: broken(**{"optim.lr_decay": "cosine", "optim.warmup_steps": 10}),
        ConfigError,
        "needs config.optim.warmup_steps",
    ),
    "negative learning rate": (
        lambda: broken(**{"optim.learning_rate": -1.0}),
        ConfigError,
        "config.optim.learning_rate must be a finite number > 0, got -1.0",
    ),
    "zero checkpoint interval": (
        lambda: broken(**{"training.checkpoint_every_steps": 0}),
        ConfigError,
        "config.training.checkpoint_every_steps must be >= 1, got 0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_configs_are_rejected_with_the_key_named(case):
    make, error, match = BAD_CONFIGS[case]
    with pytest.raises(error, match=match):
        validate_config(make())


def test_missing_key_is_rejected():
    values = config_to_dict(load("test"))
    del values["optim"]["ema_decay"]
    with pytest.raises(ConfigError, match="lacks 'optim.ema_decay'"):
        validate_config(values)


def test_batch_must_split_over_the_devices():
    config = broken(**{"data.batch_size": 12})
    validate_config(config, num_devices=4)
    with pytest.raises(ConfigError, match=r"data.batch_size must be a multiple of .*devices \(8\)"):
        validate_config(config, num_devices=8)


def test_config_errors_are_value_and_type_errors():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigTypeError, TypeError)


def test_resume_conflicts_list_only_the_keys_that_break_a_resume():
    saved = config_to_dict(load("test"))
    longer = config_to_dict(broken(**{"training.num_steps": 100, "optim.learning_rate": 3e-4}))
    assert resume_conflicts(saved, longer) == []
    wider = config_to_dict(broken(**{"model.base_channels": 16, "seed": 1}))
    conflicts = resume_conflicts(saved, wider)
    assert conflicts == [
        "seed: 0 in the workdir, 1 now",
        "model.base_channels: 8 in the workdir, 16 now",
    ]
    assert all(key.split(".")[0] in schema_of(base_config()) for key in RESUME_KEYS)
    continuous = config_to_dict(broken(**{"diffusion.process": "rectified_flow"}))
    assert resume_conflicts(saved, continuous) == [
        "diffusion.process: 'discrete' in the workdir, 'rectified_flow' now"
    ]


def test_a_0_1_0_run_record_is_upgraded_to_what_0_1_0_did():
    values = config_to_dict(load("test"))
    old = {**values, "model": {k: v for k, v in values["model"].items() if k != "name"}}
    old["diffusion"] = {
        k: v for k, v in values["diffusion"].items()
        if k not in ("process", "process_options", "time_sampler", "time_sampler_options")
    }  # fmt: skip
    old["sampling"] = {k: v for k, v in values["sampling"].items() if k != "options"}
    old["sampling"]["eta"] = 0.5
    upgraded = upgrade_config(old)
    assert upgraded["model"]["name"] == "unet" and upgraded["diffusion"]["process"] == "discrete"
    assert upgraded["sampling"]["options"] == {"eta": 0.5} and "eta" not in upgraded["sampling"]
    assert validate_config(upgraded)
    assert upgrade_config(values) == values


def test_a_0_2_0_run_record_is_upgraded_to_what_0_2_0_did():
    """0.2.0 had no imports, codec, objective or sharding section and called the condition
    dropout label_dropout."""
    values = config_to_dict(load("cifar10_cond"))
    old = {key: value for key, value in values.items()
           if key not in ("imports", "codec", "objective", "sharding")}  # fmt: skip
    old["training"] = dict(values["training"])
    old["training"]["label_dropout"] = old["training"].pop("cond_dropout")
    upgraded = upgrade_config(old)
    assert upgraded == values
    assert resume_conflicts(old, values) == []


def test_the_schema_is_derived_from_the_base_config():
    """One source of truth: every key of the base config is in the schema with its default's
    type; placeholders may be None; empty sections are free option mappings."""
    schema = schema_of(base_config())
    assert schema["optim"]["grad_clip_norm"] == "float or None"
    assert schema["data"]["data_dir"] == "str or None"
    assert schema["model"]["num_classes"] == "int or None"
    assert schema["model"]["channel_mults"] == "tuple of int"
    assert schema["imports"] == "tuple of str"
    assert schema["sampling"]["options"].startswith("mapping")
    assert schema["training"]["num_steps"] == "int"
    assert schema_keys(schema) == schema_keys(config_schema(config_to_dict(base_config())))


def test_config_read_back_from_json_compares_equal():
    import json

    values = config_to_dict(load("cifar10_cond"))
    assert config_to_dict(json.loads(json.dumps(values))) == values
    assert resume_conflicts(json.loads(json.dumps(values)), values) == []


@pytest.mark.parametrize(
    "name", [name for name in CONFIG_NAMES if load(name).eval.quoted_fd.to_dict()]
)
def test_a_quoted_fd_belongs_to_its_recipe_as_it_is(name):
    """A recipe quotes what its author measured together with the digest of its settings: a
    change to the recipe that changes its runs must come with a new measurement (this fails)."""
    from diffjax.training.config import quoted_fd, settings_digest

    values = validate_config(load(name))
    assert values["eval"]["quoted_fd"]["digest"] == settings_digest(values)
    steps = [int(key) for key in values["eval"]["quoted_fd"] if key != "digest"]
    assert steps and all(quoted_fd(values, step) > 0 for step in steps)


def test_a_quote_holds_only_for_the_settings_it_was_measured_with():
    from diffjax.training.config import quoted_fd, settings_digest

    config = load("fashion_mnist")
    config.eval.quoted_fd = {"digest": settings_digest(validate_config(config)), "1000": 33.0}
    assert quoted_fd(validate_config(config), 1000) == 33.0
    assert quoted_fd(validate_config(config), 500) is None  # no quote at that step
    # How often it logs, saves or evaluates, and (with a constant learning rate) how long it
    # trains, leave the weights at step 1000 unchanged.
    config.training.log_every_steps = 7
    config.eval.fd_every_steps = 250
    config.training.num_steps = 3000
    assert quoted_fd(validate_config(config), 1000) == 33.0
    for key, value in (("model.base_channels", 16), ("sampling.num_steps", 20), ("seed", 1)):
        changed = load("fashion_mnist")
        changed.eval.quoted_fd = config.eval.quoted_fd
        section, _, name = key.rpartition(".")
        setattr(changed[section] if section else changed, name, value)
        assert quoted_fd(validate_config(changed), 1000) is None, key
    config.optim.lr_decay = "cosine"  # now the length of the run shapes the weights at 1000
    assert quoted_fd(validate_config(config), 1000) is None
