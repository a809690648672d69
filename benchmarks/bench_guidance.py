"""Classifier guidance on Fashion-MNIST: its cost per sampling step on CPU and its samples.

Speed (``--part speed``), in one run on the idle machine:

1. a 3x3 convolution (32 channels, 28x28, batch 8): its input gradient jitted alone, as the
   body of a ``lax.scan`` with ``jax.grad`` (XLA:CPU's slow path, jax-ml/jax#12868), and in the
   scan with ``diffjax.samplers.input_gradient`` (kernels transposed to the ordinary layout);
   PyTorch's forward pass and input gradient of the same convolution beside them (``--peers``
   names the peer venv's python);
2. one sampling step (flow Euler, batch ``--batch``) of the default run's UNet: unguided;
   guided by the noisy classifier's gradient with ``jax.grad`` (before) and with
   ``input_gradient`` (after); and guided through the UNet itself (``wrt='x0'``: a backward
   pass of the denoiser), after.

Quality (``--part quality``): FD-FMNIST (1000 samples against the 10,000 test images, the
shipped classifier's features) and class accuracy (the shipped FD-FMNIST classifier's argmax
against the class each sample was drawn for, class i mod 10) of the unconditional run's
samples, unguided and classifier-guided at several scales, and of a class-conditional run's
samples with classifier-free guidance, all with flow Euler in 50 steps, seed 0, EMA weights:

  .venv/bin/python benchmarks/bench_guidance.py --part speed --uncond runs/fmnist \
      --classifier runs/fmnist_classifier --peers /work/peers/bin/python
  .venv/bin/python benchmarks/bench_guidance.py --part quality --uncond runs/fmnist \
      --classifier runs/fmnist_classifier --cond runs/fmnist_cond

``runs/fmnist`` is README command 1's run, ``runs/fmnist_classifier`` configs/
fashion_mnist_classifier.py's and ``runs/fmnist_cond`` the default recipe with
``--config.model.num_classes=10 --config.training.cond_dropout=0.1``. Each quality row is saved
in ``benchmarks/out/guidance_quality.json`` as it finishes (a rerun skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "benchmarks", "out")

TORCH_CONV = """
import json, time, torch
torch.set_num_threads({threads})
conv = torch.nn.Conv2d(32, 32, 3, padding=1)
x = torch.randn(8, 32, 28, 28, requires_grad=True)
def call():
    out = torch.tanh(conv(x)).sum()
    return torch.autograd.grad(out, x)[0]
for _ in range(3): call()
start = time.perf_counter()
for _ in range({repeats}): call()
print(json.dumps((time.perf_counter() - start) / {repeats} * 1e3))
"""


def _best_ms(fn, *args, repeats: int = 5, calls: int = 1) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e3


def convolution_rows(peers: str | None, threads: int) -> list[dict]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from diffjax.samplers import input_gradient

    x = jax.random.normal(jax.random.key(0), (8, 28, 28, 32))
    conv = nn.Conv(32, (3, 3))
    params = conv.init(jax.random.key(1), x)

    def scalar(y):
        return jnp.tanh(conv.apply(params, y)).sum(axis=(1, 2, 3))

    def plain(y):
        return jax.grad(lambda z: scalar(z).sum())(y)

    def rewritten(y):
        return input_gradient(scalar, y)

    length = 10

    def in_scan(gradient):
        body = lambda carry, _: (carry + 1e-3 * gradient(carry), None)  # noqa: E731
        return jax.jit(lambda y: jax.lax.scan(body, y, None, length=length)[0])

    rows = [
        dict(case="conv 3x3 input gradient, jitted alone", ms=_best_ms(jax.jit(plain), x)),
        dict(case="the same in a lax.scan, jax.grad", ms=_best_ms(in_scan(plain), x, calls=length)),
        dict(
            case="the same in a lax.scan, input_gradient",
            ms=_best_ms(in_scan(rewritten), x, calls=length),
        ),  # fmt: skip
    ]
    if peers and os.path.exists(peers):
        script = TORCH_CONV.format(threads=threads, repeats=50)
        out = subprocess.run([peers, "-c", script], capture_output=True, text=True)
        if out.returncode == 0:
            rows.append(dict(case=f"the same in PyTorch ({threads} threads)",
                             ms=json.loads(out.stdout)))  # fmt: skip
    return rows


def sampler_rows(uncond: str, classifier_dir: str, batch: int, steps: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import diffjax as dj
    import diffjax.samplers.guidance as guidance
    from diffjax.models import make_model_fn
    from diffjax.training.classifier_guidance import load_run_classifier

    run = dj.load_trained_run(uncond)
    classifier = load_run_classifier(classifier_dir, run.config, 2.0)
    model_fn = make_model_fn(run.model, run.state.ema_params)
    keys = dj.sample_keys(0, 0, batch)
    labels = np.arange(batch) % 10
    shape = (batch, *run.programs.latent_shape)
    options = dict(num_steps=steps, prediction_type="flow", t_max=0.999)

    def timed(guide) -> float:
        def draw():
            return dj.sample("flow_euler", model_fn, run.process, keys, shape, guide=guide,
                             **options)  # fmt: skip

        jax.block_until_ready(draw())
        start = time.perf_counter()
        jax.block_until_ready(draw())
        return (time.perf_counter() - start) / steps * 1e3

    rows = [dict(case=f"flow Euler step, batch {batch}, unguided", ms=timed(None))]
    plain_gradient = lambda fn, x: jax.grad(lambda y: jnp.sum(fn(y)))(x)  # noqa: E731
    after = guidance.input_gradient
    # The runner's jit cache keys on the guide's pytree, not on what its function calls:
    # clear it around the swap so each variant is traced and compiled on its own.
    jax.clear_caches()
    guidance.input_gradient = plain_gradient
    try:
        rows.append(dict(case="classifier-guided, jax.grad (before)",
                         ms=timed(classifier.guide(labels))))  # fmt: skip
    finally:
        guidance.input_gradient = after
        jax.clear_caches()
    rows.append(dict(case="classifier-guided, input_gradient (after)",
                     ms=timed(classifier.guide(labels))))  # fmt: skip
    x0_guide = dj.gradient_guidance(
        jax.tree_util.Partial(_x0_log_prob, make_model_fn(classifier.module, classifier.params)),
        2.0,
        wrt="x0",
    )
    rows.append(dict(case="guided through the UNet (wrt='x0'), input_gradient",
                     ms=timed(x0_guide)))  # fmt: skip
    return rows


def _x0_log_prob(logits_fn, x0_hat, t):
    """The classifier's log-probability of class 0 on the denoised estimate, at time 0: a
    differentiable function of x0_hat for universal guidance (only its cost is measured)."""
    import jax
    import jax.numpy as jnp

    return jax.nn.log_softmax(logits_fn(x0_hat, jnp.zeros(x0_hat.shape[0])))[:, 0]


def quality(args) -> list[dict]:
    import jax
    import numpy as np

    import diffjax as dj
    from diffjax.images import to_uint8
    from diffjax.metrics.fmnist_classifier import fmnist_features, load_fmnist_classifier
    from diffjax.metrics.frechet import frechet_distance, load_statistics, statistics_from_features
    from diffjax.training.classifier_guidance import load_run_classifier

    path = os.path.join(OUT, "guidance_quality.json")
    done = json.load(open(path)) if os.path.exists(path) else {}
    variables = load_fmnist_classifier()
    reference, _ = load_statistics(
        os.path.join(args.uncond, "eval", "reference_fmnist_fashion_mnist_test_all.npz")
    )
    num, labels = args.num, np.arange(args.num) % 10
    settings = [("unguided", args.uncond, None, 1.0)]
    settings += [(f"classifier s={s:g}", args.uncond, s, 1.0) for s in args.scales]
    if args.cond:
        settings += [(f"classifier-free w={w:g}", args.cond, None, w) for w in args.cfg]
    runs = {}
    for name, workdir, scale, weight in settings:
        if name in done:
            continue
        run = runs.get(workdir) or runs.setdefault(workdir, dj.load_trained_run(workdir))
        classifier = None
        if scale is not None:
            classifier = load_run_classifier(args.classifier, run.config, scale)
        start = time.perf_counter()
        samples = dj.sample_run(
            run, num, batch_size=args.batch, sampler="flow_euler", num_steps=50,
            options=dict(t_max=0.999) if scale is not None else None, seed=0,
            labels=labels if (classifier is not None or run.config["model"]["num_classes"])
            else None,
            guidance_scale=weight, classifier=classifier,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        os.makedirs(OUT, exist_ok=True)
        np.savez(os.path.join(OUT, f"guidance_samples_{name.replace(' ', '_')}.npz"), samples)
        outputs = [fmnist_features(variables, to_uint8(samples[i : i + 500]))
                   for i in range(0, num, 500)]  # fmt: skip
        features = np.concatenate([np.asarray(o["features"]) for o in outputs])
        logits = np.concatenate([np.asarray(o["logits"]) for o in outputs])
        fd = frechet_distance(statistics_from_features(features), reference)
        accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
        done[name] = dict(fd_fmnist=fd, class_accuracy=accuracy, seconds=seconds, n=num,
                          sampler="flow_euler", steps=50, seed=0, workdir=workdir,
                          classifier=args.classifier if scale is not None else None,
                          devices=jax.device_count())  # fmt: skip
        os.makedirs(OUT, exist_ok=True)
        json.dump(done, open(path, "w"), indent=1)
        print(name, done[name], flush=True)
    return [dict(case=name, **row) for name, row in done.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "quality"), required=True)
    parser.add_argument("--uncond", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--cond", default=None)
    parser.add_argument("--peers", default=os.path.join(REPO, "benchmarks", ".peers-venv",
                                                        "bin", "python"))  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--scales", type=float, nargs="*", default=[1.0, 2.0, 4.0])
    parser.add_argument("--cfg", type=float, nargs="*", default=[1.0, 2.0])
    args = parser.parse_args()
    if args.part == "speed":
        rows = convolution_rows(args.peers, args.threads)
        rows += sampler_rows(args.uncond, args.classifier, 64, args.steps)
        for row in rows:
            print(f"| {row['case']} | {row['ms']:.2f} |")
    else:
        for row in quality(args):
            print(f"| {row['case']} | {row['fd_fmnist']:.2f} | {row['class_accuracy']:.3f} | "
                  f"{row['seconds']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
