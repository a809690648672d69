r"""Evaluates a trained run: ``python -m diffjax.evaluate --workdir DIR``.

Examples::

  python -m diffjax.evaluate --workdir runs/fmnist                  # FD-FMNIST, 10k samples
  python -m diffjax.evaluate --workdir runs/fmnist --metrics fd,kid,pr,is,bpd --num 10000 \
      --sampler dpm_solver --steps 20
  python -m diffjax.evaluate --workdir runs/cifar10 --features inception --metrics fd,is,kid
  python -m diffjax.evaluate --workdir runs/fmnist --classifier runs/fmnist_classifier \
      --classifier_scale 2 --num 1000
  python -m diffjax.evaluate --make_reference_stats --dataset cifar10 --split train \
      --image_size 32 --features inception --out cifar10_train_inception.npz

Draws ``--num`` samples from the newest good checkpoint (EMA weights; ``--noema`` for the raw
ones), sample i with the key ``fold_in(key(seed), i)``, quantizes them to uint8, extracts
features in batches sharded over the devices and streams them into float64 moments, then
writes ``DIR/eval/<step>-<sampler>-<num>-<digest>.json`` (results and the whole protocol: n,
sampler, steps, options, guidance, weights, feature network and its checksum, reference
statistics; the digest is of the settings, so no evaluation overwrites another's result) and
prints a table.
An interrupted evaluation resumes where it stopped when rerun with the same flags.

For an autoencoder run (``config.objective.name = 'autoencoder'``) it measures the PSNR and
SSIM of the EMA reconstructions of the first ``--num`` images of ``config.eval.split`` instead
(:mod:`diffjax.evaluation.reconstruction`; resumable too).

Metrics (``--metrics``, comma-separated): ``fd`` (FID with ``--features inception``,
FD-FMNIST with ``--features fmnist``), ``kid``, ``pr`` (precision/recall), ``is``, ``bpd``
(bits/dim on the first ``--bpd_num`` images of the evaluation split: ``bpd_ode`` through the
probability-flow ODE for every process, uniformly dequantized, at ``--bpd_rtol`` with
``--bpd_divergence`` probes; and for a discrete schedule also ``bpd``, the variational bound
with ``--bpd_timesteps`` timesteps per image). The default feature
network is the shipped Fashion-MNIST classifier for 28x28x1 runs, Inception otherwise; Inception
needs its published weights (``--inception_weights``, ``$DIFFJAX_INCEPTION_WEIGHTS``, the cache,
or a download). The reference statistics default to the run's ``config.eval.split``, built once
and cached in ``DIR/eval/``; ``--reference`` takes a pytorch-fid / clean-fid ``.npz`` instead.

Unlike ``python -m diffjax.train``, it does not add the CPU convolution flag by default: with
that flag and several CPU devices, XLA's sampling loop is not bit-reproducible from run to run
(``--fast_cpu_convolutions`` adds it, for somewhat faster sampling: ``benchmarks/RESULTS.md``).
``--seed`` defaults to the run's ``config.sampling.seed``, the seed of the FD-FMNIST logged
during training.
"""

from __future__ import annotations

from typing import Any

from absl import flags

from diffjax import cli
from diffjax.cli import (
    cpu_devices_from_flag,
    define_cpu_devices_flag,
    define_fast_cpu_convolutions_flag,
    define_multihost_flags,
    describe_sampler,
    main_runner,
    parse_option,
    run_program,
)

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's folder.")
_METRICS = flags.DEFINE_list("metrics", ["fd"], "Metrics: fd, kid, pr, is, bpd.")
_NUM = flags.DEFINE_integer("num", 10_000, "Number of samples.")
_BATCH = flags.DEFINE_integer("batch", 256, "Samples (and reference images) per batch.")
_SAMPLER = flags.DEFINE_string(
    "sampler", None,
    "Sampler by name (diffjax.samplers.SAMPLER_NAMES, or one the run's config.imports "
    "registers); default: the run's config.",
)  # fmt: skip
_STEPS = flags.DEFINE_integer(
    "steps", None,
    "Sampling steps; default: the run's config for its sampler, another sampler's own default "
    "(ddpm: all T). The adaptive 'ode' sampler only starts with this step count.",
)  # fmt: skip
_OPTIONS = flags.DEFINE_multi_string("option", [], "A sampler option as name=value (repeatable).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Guidance weight; default: the config's.")
_CLASSIFIER = flags.DEFINE_string(
    "classifier", None,
    "Classifier guidance: the workdir of a noisy classifier trained on the run's process; "
    "sample i is guided towards class i mod K.",
)  # fmt: skip
_CLASSIFIER_SCALE = flags.DEFINE_float(
    "classifier_scale", 1.0, "The classifier guidance scale (with --classifier)."
)
_EMA = flags.DEFINE_bool("ema", True, "Use the EMA weights (--noema: the raw weights).")
_SEED = flags.DEFINE_integer(
    "seed", None, "Seed of the samples (default: the run's config.sampling.seed)."
)
_FEATURES = flags.DEFINE_enum(
    "features", None, ["inception", "fmnist"],
    "Feature network; default fmnist for 28x28x1 runs, else inception; with --samples, the "
    "one the --reference records.",
)  # fmt: skip
_REFERENCE = flags.DEFINE_string(
    "reference", None, "Reference statistics .npz (mu, sigma[, features]); default: built."
)
_NUM_REFERENCE = flags.DEFINE_integer(
    "num_reference", 0, "Images of the split in a built reference (0: all)."
)
_INCEPTION_WEIGHTS = flags.DEFINE_string(
    "inception_weights", None, "Path of pt_inception-2015-12-05-6726825d.pth."
)
_DOWNLOAD = flags.DEFINE_bool("download", True, "May download the Inception weights.")
_BPD_NUM = flags.DEFINE_integer("bpd_num", 256, "Evaluation images for bpd.")
_BPD_TIMESTEPS = flags.DEFINE_integer(
    "bpd_timesteps", 100, "Timesteps per image for bpd (an unbiased estimate); 0: all T."
)
_BPD_RTOL = flags.DEFINE_float("bpd_rtol", 1e-5, "rtol = atol of the bpd ODE solve.")
_BPD_DIVERGENCE = flags.DEFINE_enum(
    "bpd_divergence", "rademacher", ["rademacher", "gaussian", "exact"],
    "Divergence of the bpd ODE: Hutchinson probes, or exact (D Jacobian products per evaluation).",
)  # fmt: skip
_BPD_AUTODIFF = flags.DEFINE_enum(
    "bpd_autodiff", "forward", ["forward", "reverse"],
    "Jacobian products of the bpd ODE: forward mode, or reverse for a network with a custom_vjp.",
)  # fmt: skip
_MAKE_REFERENCE = flags.DEFINE_bool(
    "make_reference_stats", False, "Only build reference statistics of a dataset split."
)
_DATASET = flags.DEFINE_string("dataset", None, "With --make_reference_stats and no --workdir.")
_SPLIT = flags.DEFINE_string("split", None, "With --make_reference_stats: the split.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "With --dataset: the image size.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "With --dataset: the TFDS data directory.")
_OUT = flags.DEFINE_string(
    "out", None, "With --make_reference_stats: the .npz to write; with --samples: the .json."
)
_SAMPLES = flags.DEFINE_string(
    "samples",
    None,
    "Score these samples (.npz with 'samples' in [-1, 1] or uint8) instead of "
    "a run's; needs --reference.",
)
_FAST_CPU_CONVOLUTIONS = define_fast_cpu_convolutions_flag(default=False)
_CPU_DEVICES = define_cpu_devices_flag()
_MULTIHOST = define_multihost_flags()


# The shared flags (CPU devices, the CPU convolution flag, multi-host) belong in --help too.
flags.adopt_module_key_flags(cli)


def _dataset_values() -> dict:
    """The config values a reference build needs, from --workdir or from --dataset."""
    from diffjax.errors import ConfigError
    from diffjax.training.config import upgrade_config
    from diffjax.training.workdir import load_run_record

    if _WORKDIR.value:
        record = load_run_record(_WORKDIR.value)
        if record is None:
            raise ConfigError(f"{_WORKDIR.value} holds no diffjax run; pass a training --workdir.")
        return upgrade_config(record["config"])
    if not _DATASET.value or not _IMAGE_SIZE.value:
        raise ConfigError("--make_reference_stats needs --workdir, or --dataset and --image_size.")
    data = dict(
        name=_DATASET.value, image_size=_IMAGE_SIZE.value, data_dir=_DATA_DIR.value,
        manual_dir=None, download=True, num_threads=4, prefetch_batches=4,
    )  # fmt: skip
    return dict(data=data, seed=0, eval=dict(split=_SPLIT.value or "test"))


def _default_features(image_shape) -> str:
    return "fmnist" if tuple(image_shape) == (28, 28, 1) else "inception"


def make_reference_main() -> str:
    """Builds reference statistics as the flags say; returns the path written."""
    from diffjax.errors import ConfigError
    from diffjax.evaluation.references import build_reference, reference_path
    from diffjax.metrics import load_feature_network
    from diffjax.sharding import make_mesh

    values = _dataset_values()
    split = _SPLIT.value or values["eval"]["split"]
    size = values["data"]["image_size"]
    features = _FEATURES.value or (
        "fmnist" if values["data"]["name"] == "fashion_mnist" and size == 28 else "inception"
    )
    network = load_feature_network(
        features, weights_path=_INCEPTION_WEIGHTS.value, download=_DOWNLOAD.value
    )
    if _OUT.value:
        path = _OUT.value
    elif _WORKDIR.value:
        path = reference_path(
            _WORKDIR.value, network, values["data"]["name"], split, _NUM_REFERENCE.value
        )
    else:
        raise ConfigError("--make_reference_stats without --workdir needs --out.")
    try:
        build_reference(
            values, network, make_mesh(), path, split=split, num=_NUM_REFERENCE.value,
            batch_size=_BATCH.value,
        )  # fmt: skip
    except ValueError as error:
        raise ConfigError(f"--features {features}: {error}") from error
    dataset = f"{values['data']['name']}:{split}"
    print(f"diffjax.evaluate: wrote {path} ({network.name} features of {dataset})")
    return path


def samples_main() -> dict:
    """Scores ``--samples`` against ``--reference`` and prints (and writes ``--out``) the result."""
    from diffjax.errors import ConfigError
    from diffjax.evaluation.features import write_json
    from diffjax.evaluation.program import evaluate_samples, log_table
    from diffjax.training.console import log

    if not _REFERENCE.value:
        raise ConfigError("--samples needs --reference (the statistics to compare with).")
    result = evaluate_samples(
        _SAMPLES.value, _REFERENCE.value, features=_FEATURES.value,
        metrics=tuple(_METRICS.value), batch_size=_BATCH.value,
        weights_path=_INCEPTION_WEIGHTS.value, download=_DOWNLOAD.value,
    )  # fmt: skip
    if _OUT.value:
        write_json(_OUT.value, result)
    num_samples = result["protocol"]["samples"]["num_samples"]
    log(f"diffjax.evaluate: {num_samples} samples from {_SAMPLES.value}")
    log_table(result)
    return result


def _quoted(config: dict, settings: Any, step: int) -> float | None:
    """The recipe's quoted Fréchet distance at ``step`` if this evaluation repeats the one the
    training logged (:func:`diffjax.training.config.quoted_fd`), else None."""
    from diffjax.training.config import quoted_fd
    from diffjax.training.programs import sampling_settings

    evaluation, sampling = config["eval"], config["sampling"]
    same = (
        "fd" in settings.metrics
        and settings.num_samples == evaluation["fd_num_samples"]
        and (settings.sampler, settings.options) == sampling_settings(config)
        and settings.guidance_scale == sampling["guidance_scale"]
        and settings.classifier is None
        and settings.ema
        and settings.seed == sampling["seed"]
        and settings.features == evaluation["fd_features"]
        and settings.reference == evaluation["fd_reference"]
    )
    return quoted_fd(config, step) if same else None


def evaluate_main() -> dict:
    """Evaluates the run in ``--workdir`` as the flags say."""
    from diffjax.errors import ConfigError
    from diffjax.evaluation.program import EvalSettings, evaluate_run, log_table
    from diffjax.training.console import log
    from diffjax.training.workdir import load_run_record

    if not _WORKDIR.value:
        raise ConfigError("--workdir is required (or --make_reference_stats with --dataset).")
    record = load_run_record(_WORKDIR.value)
    if record is None:
        raise ConfigError(f"{_WORKDIR.value} holds no diffjax run; pass a training --workdir.")
    from diffjax.training.config import upgrade_config
    from diffjax.training.programs import sampling_settings

    config = upgrade_config(record["config"])
    if config["objective"]["name"] == "autoencoder":
        from diffjax.evaluation.reconstruction import evaluate_reconstruction

        result = evaluate_reconstruction(
            _WORKDIR.value, num_images=_NUM.value, batch_size=_BATCH.value, ema=_EMA.value
        )
        ssim_text = "" if result["ssim"] is None else f", SSIM {result['ssim']:.4f}"
        log(
            f"diffjax.evaluate: step {result['step']}, reconstructions of {result['num_images']} "
            f"{result['split']} images ({result['weights']} weights): PSNR {result['psnr']:.2f} "
            f"dB{ssim_text}; {result['seconds']:.0f} s; wrote {result['path']}"
        )
        return result
    if config["objective"]["name"] == "classifier":
        raise ConfigError(
            f"{_WORKDIR.value} is a noisy classifier (config.objective.name='classifier'): it "
            f"draws no samples; its accuracy by noise level is in its metrics.jsonl, and it "
            f"guides another run's evaluation with --classifier {_WORKDIR.value}."
        )
    sampling = config["sampling"]
    sampler, options = sampling_settings(
        config, sampler=_SAMPLER.value, num_steps=_STEPS.value,
        options=dict(parse_option(text) for text in _OPTIONS.value),
    )  # fmt: skip
    settings = EvalSettings(
        metrics=tuple(_METRICS.value),
        num_samples=_NUM.value,
        batch_size=_BATCH.value,
        sampler=sampler,
        options=options,
        guidance_scale=sampling["guidance_scale"] if _GUIDANCE.value is None else _GUIDANCE.value,
        ema=_EMA.value,
        seed=sampling["seed"] if _SEED.value is None else _SEED.value,
        features=_FEATURES.value or _default_features(record["dataset"]["image_shape"]),
        reference=_REFERENCE.value,
        num_reference=_NUM_REFERENCE.value,
        bpd_num=_BPD_NUM.value,
        bpd_timesteps=_BPD_TIMESTEPS.value or None,
        bpd_rtol=_BPD_RTOL.value,
        bpd_divergence=_BPD_DIVERGENCE.value,
        bpd_autodiff=_BPD_AUTODIFF.value,
        classifier=_CLASSIFIER.value or None,
        classifier_scale=_CLASSIFIER_SCALE.value,
    )
    result = evaluate_run(
        _WORKDIR.value, settings, weights_path=_INCEPTION_WEIGHTS.value, download=_DOWNLOAD.value
    )
    log(
        f"diffjax.evaluate: step {result['step']}, {settings.num_samples} samples "
        f"({describe_sampler(sampler, options)[0]}, {settings.features} features), "
        f"{result['seconds']:.0f} s; wrote {result['path']}"
    )
    log_table(result)
    quoted = _quoted(config, settings, result["step"])
    if quoted is not None:
        log(
            f"  The recipe's measured {settings.features} Fréchet distance at this step, with "
            f"these settings: {quoted:.1f} (logged during training, with the CPU convolution "
            f"flag; expect a value near it)."
        )
    return result


def main(argv: list[str]) -> None:
    """absl entry point: runs the evaluation; expected failures print one line."""
    run_program(
        "diffjax.evaluate",
        argv,
        make_reference_main
        if _MAKE_REFERENCE.value
        else (samples_main if _SAMPLES.value else evaluate_main),
        fast_cpu_convolutions=_FAST_CPU_CONVOLUTIONS.value,
        multihost=_MULTIHOST,
        cpu_devices=cpu_devices_from_flag(_CPU_DEVICES.value, [_BATCH.value]),
    )


if __name__ == "__main__":
    main_runner("diffjax.evaluate", main)
