r"""Trains lucidrains' denoising-diffusion-pytorch on Fashion-MNIST with diffjax's recipes.

The same run as ``python -m diffjax.train --config configs/fashion_mnist_ddpm.py`` (with
``--objective flow``: ``configs/fashion_mnist.py``, the default), done with the PyTorch peer,
so that its samples can be scored (FD-FMNIST) beside diffjax's own model. Runs only in
benchmarks/.peers-venv (benchmarks/setup_peers.sh), never in the diffjax environment:

    benchmarks/.peers-venv/bin/python benchmarks/peers/train_fmnist_peer.py
    benchmarks/.peers-venv/bin/python benchmarks/peers/train_fmnist_peer.py \
        --checkpoint benchmarks/out/peer_lucidrains_fmnist.pt --grid leading \
        --out benchmarks/out/peer_lucidrains_fmnist_samples_leading.npz
    benchmarks/.peers-venv/bin/python benchmarks/peers/train_fmnist_peer.py --objective flow

What it trains: ``GaussianDiffusion(Unet(...), objective='pred_noise', beta_schedule='cosine')``
over T discrete steps, with the Unet at :data:`UNET_KWARGS` (lucidrains' own block layout at
the width whose parameter count is closest to diffjax's default UNet). The recipe of
configs/fashion_mnist_ddpm.py, in a plain loop instead of lucidrains' ``Trainer`` (which wants an
image folder and torchvision):

- data: the 60,000 Fashion-MNIST training images, read from the IDX gzip files, scaled to
  [-1, 1], no flips; shuffled batches (drop remainder, a fresh permutation each epoch) from a
  NumPy generator seeded with ``--seed``;
- loss: eps-prediction MSE with uniform t in [0, T), no loss weighting (lucidrains' weight for
  ``pred_noise`` without min-SNR is exactly one; checked at start-up), no offset noise, no
  self-conditioning, no immiscible noise assignment, no dropout; ``auto_normalize=False``, so
  the network sees the same [-1, 1] images diffjax's does; t and the noise are drawn from a
  torch generator seeded with ``--seed`` and passed in;
- optimiser: Adam (0.9, 0.999, 1e-8), learning rate ramped linearly from 0 over the warm-up
  steps and constant after (optax.linear_schedule, as diffjax), global gradient norm clipped
  before the step;
- EMA: ``ema_pytorch.EMA`` updated after every step, with ``update_after_step=0``,
  ``update_every=1``, ``power=1`` and ``inv_gamma=9``, and one ``update()`` before training
  (which copies the initial weights); the decay of the k-th update is then
  ``1 - 1 / (1 + k / 9) = min(beta, (1 + n) / (10 + n))`` with n = k - 1 updates before it,
  exactly diffjax's warm-up (diffjax/training/train_state.py: ema_decay_at).

The loss is logged every ``--log-every`` steps; at the end a checkpoint (state dicts of the
online and EMA Unets and of the optimiser) is written. Then ``--num-samples`` images are drawn
with the EMA Unet by DDIM (eta = 0, ``--sampling-steps`` steps, x0-prediction clipped to
[-1, 1] and eps re-derived from it, as diffjax's DDIM with clip_x0) in batches, after
``torch.manual_seed(--seed)``. ``--grid lucidrains`` (default) is lucidrains' own
``ddim_sample``, whose grid is ``linspace(-1, T-1, S+1)``: it starts at T-1 and its output is
the x0-prediction at the smallest grid point above 0. ``--grid leading`` is the same DDIM
update on diffjax's default grid (``'leading'``: ``k * (T // S)``, ending with the
x0-prediction at t = 0). ``--checkpoint`` skips training and samples from a saved checkpoint.

``--objective flow`` trains the same Unet as diffjax's default run does (configs/fashion_mnist.py):
a rectified flow, x_t = (1 - t) x_0 + t eps, the Unet predicting the velocity eps - x_0 from
(x_t, 1000 t) with the plain regression loss, t = sigmoid(n), n ~ N(0, 1) (SD3's logit-normal
times), the same optimiser and EMA; its samples are Euler's method in ``--sampling-steps``
uniform steps from t = 1 to 0 with diffjax's clipping (the x0-prediction x_t - t v clipped to
[-1, 1] and the velocity re-derived from it), from ``torch.manual_seed(--seed)`` noise. Its
default files are ``peer_lucidrains_fmnist_flow*``.

Writes, next to each other:

- ``--out`` (.npz): ``samples`` float32 [N, 28, 28, 1] in [-1, 1] (NHWC, clipped; the layout of
  ``python -m diffjax.sample``), ``timesteps`` (the sampling grid), scalar metadata (training
  steps, sampler, grid, seed, parameters, training and sampling wall seconds, images/s, final
  loss, versions) and all of it again as a JSON string ``metadata``;
- the same path with ``.png``: an 8x8 grid of the first 64 samples, each tile upscaled 2x;
- the checkpoint (``--checkpoint-out``, default: ``--out``'s folder,
  ``peer_lucidrains_fmnist.pt`` or ``peer_lucidrains_fmnist_flow.pt``) and a JSON log of the
  training losses beside it.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata as metadata
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import count_params, import_lucidrains  # noqa: E402

DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "out",
    "peer_lucidrains_fmnist_samples.npz",
)
# lucidrains' Unet has two ResNet blocks per level (fixed), linear attention at the outer levels
# and full attention at the innermost one and in the middle; width 28 over (1, 2, 2) gives
# 28 -> 14 -> 7 like diffjax's default UNet, with the parameter count nearest to it.
UNET_KWARGS = dict(dim=28, dim_mults=(1, 2, 2), channels=1, dropout=0.0)
# configs/fashion_mnist_ddpm.py (on top of configs/base.py).
RECIPE = dict(
    num_timesteps=1000,
    learning_rate=1e-3,
    warmup_steps=200,
    grad_clip_norm=1.0,
    ema_decay=0.999,
    adam_betas=(0.9, 0.999),
    adam_eps=1e-8,
)
# Warm-up of ema_pytorch's decay 1 - (1 + k / inv_gamma) ** -power that equals diffjax's
# (1 + n) / (10 + n) at the k-th update, k = n + 1 (see the module docstring).
EMA_INV_GAMMA = 9.0
EMA_POWER = 1.0


def read_idx_images(path: str) -> np.ndarray:
    """Reads an IDX3 (gzip) image file: uint8 ``[N, rows, cols]``.

    Raises:
      ValueError: the file is not an IDX3 uint8 image file or is truncated.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count, rows, cols = np.frombuffer(data[:16], dtype=">u4")
    if magic != 2051:
        raise ValueError(f"{path}: IDX magic number {magic}, expected 2051 (uint8 images).")
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16)
    if pixels.size != count * rows * cols:
        raise ValueError(f"{path}: {pixels.size} pixels, expected {count} x {rows} x {cols}.")
    return pixels.reshape(int(count), int(rows), int(cols))


def load_train_images(data_dir: str) -> torch.Tensor:
    """The Fashion-MNIST training images as float32 ``[N, 1, 28, 28]`` in [-1, 1]."""
    images = read_idx_images(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    scaled = images.astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(scaled[:, None])


def batch_indices(num_images: int, batch_size: int, seed: int):
    """Yields index arrays of shuffled batches forever: a fresh permutation each epoch, the
    last incomplete batch of each epoch dropped."""
    rng = np.random.default_rng(seed)
    per_epoch = num_images // batch_size
    while True:
        order = rng.permutation(num_images)
        for i in range(per_epoch):
            yield order[i * batch_size : (i + 1) * batch_size]


def build_diffusion(lucidrains, unet: torch.nn.Module, sampling_steps: int) -> torch.nn.Module:
    """lucidrains' GaussianDiffusion around ``unet`` with diffjax's default process."""
    return lucidrains.GaussianDiffusion(
        unet,
        image_size=28,
        timesteps=RECIPE["num_timesteps"],
        sampling_timesteps=sampling_steps,
        objective="pred_noise",
        beta_schedule="cosine",
        ddim_sampling_eta=0.0,
        auto_normalize=False,
        offset_noise_strength=0.0,
        min_snr_loss_weight=False,
        immiscible=False,
    )


def check_matches_recipe(diffusion: torch.nn.Module) -> None:
    """Fails fast if lucidrains' diffusion would train anything but diffjax's plain loss."""
    weight = diffusion.loss_weight
    if not torch.allclose(weight, torch.ones_like(weight)):
        raise RuntimeError(f"loss weights are not all one: min {weight.min()}, max {weight.max()}")
    if diffusion.self_condition or diffusion.offset_noise_strength or diffusion.immiscible:
        raise RuntimeError("self-conditioning, offset noise or immiscible diffusion is on.")
    if diffusion.model.random_or_learned_sinusoidal_cond:
        raise RuntimeError("the Unet uses learned or random Fourier time features.")


def save_grid(samples: np.ndarray, path: str, *, rows: int = 8, scale: int = 2) -> None:
    """Writes the first rows x rows samples (NHWC in [-1, 1], one channel) as a PNG grid."""
    from PIL import Image

    count = rows * rows
    if samples.shape[0] < count:
        rows = max(1, int(math.isqrt(samples.shape[0])))
        count = rows * rows
    tiles = np.round((samples[:count, ..., 0] + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    height, width = tiles.shape[1:]
    grid = tiles.reshape(rows, rows, height, width).transpose(0, 2, 1, 3)
    grid = grid.reshape(rows * height, rows * width)
    image = Image.fromarray(grid, mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    tmp = path + ".tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def train(
    diffusion: torch.nn.Module,
    ema,
    images: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    log_every: int,
    flow: bool = False,
) -> dict[str, object]:
    """Runs the training loop (``flow``: the rectified-flow loss instead of lucidrains' eps
    loss); returns the loss log and timings."""
    unet = diffusion.model
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params,
        lr=RECIPE["learning_rate"],
        betas=RECIPE["adam_betas"],
        eps=RECIPE["adam_eps"],
        foreach=True,
    )
    warmup = RECIPE["warmup_steps"]
    # Step i (0-based) uses lr * min(i / warmup, 1): optax.linear_schedule(0, lr, warmup).
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(i / warmup, 1.0) if warmup > 0 else 1.0
    )
    generator = torch.Generator().manual_seed(seed)
    batches = batch_indices(images.shape[0], batch_size, seed)
    num_timesteps = diffusion.num_timesteps

    log, window = [], []
    first_step_seconds = None
    start = time.perf_counter()
    for step in range(1, steps + 1):
        step_start = time.perf_counter()
        x0 = images[torch.from_numpy(next(batches))]
        lr = optimizer.param_groups[0]["lr"]
        if flow:
            t = torch.sigmoid(torch.randn((batch_size,), generator=generator))
            noise = torch.randn(x0.shape, generator=generator)
            loss = flow_loss(unet, x0, t, noise)
        else:
            t = torch.randint(0, num_timesteps, (batch_size,), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            loss = diffusion(x0, times=t, noise=noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, RECIPE["grad_clip_norm"], foreach=True)
        optimizer.step()
        scheduler.step()
        ema.update()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite loss {value} at step {step}")
        window.append(value)
        if first_step_seconds is None:
            first_step_seconds = time.perf_counter() - step_start
        if step % log_every == 0 or step == steps:
            elapsed = time.perf_counter() - start
            entry = dict(
                step=step,
                loss=value,
                loss_mean=float(np.mean(window)),
                lr=lr,
                grad_norm=float(grad_norm),
                ema_decay=float(ema.get_current_decay()),
                seconds=elapsed,
                images_per_second=step * batch_size / elapsed,
            )
            log.append(entry)
            window = []
            print(
                f"step {step:5d}  loss {value:.4f}  mean {entry['loss_mean']:.4f}  "
                f"lr {lr:.2e}  |g| {entry['grad_norm']:.3f}  ema {entry['ema_decay']:.4f}  "
                f"{elapsed:7.1f} s  {entry['images_per_second']:.1f} img/s",
                flush=True,
            )
    seconds = time.perf_counter() - start
    return dict(
        log=log,
        train_seconds=seconds,
        first_step_seconds=first_step_seconds,
        images_per_second=steps * batch_size / seconds,
        final_loss=log[-1]["loss"],
        final_loss_mean=log[-1]["loss_mean"],
        optimizer=optimizer.state_dict(),
    )


def flow_loss(
    unet: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """The rectified-flow regression loss: mean of (v(x_t, 1000 t) - (eps - x_0))^2 with
    x_t = (1 - t) x_0 + t eps (diffjax's RectifiedFlow with sigma_min = 0 and 'flow' target)."""
    t_image = t[:, None, None, None]
    x_t = (1.0 - t_image) * x0 + t_image * noise
    return torch.mean((unet(x_t, 1000.0 * t) - (noise - x0)) ** 2)


@torch.inference_mode()
def flow_euler(unet: torch.nn.Module, batch: int, steps: int) -> torch.Tensor:
    """Euler's method from t = 1 to 0 in ``steps`` uniform steps with clipped x0-predictions
    (diffjax's flow_euler with clip_x0): x_next = (1 - s) x0_hat + s eps_hat."""
    x = torch.randn((batch, 1, 28, 28))
    times = torch.linspace(1.0, 0.0, steps + 1)
    for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
        velocity = unet(x, torch.full((batch,), 1000.0 * t))
        x0 = (x - t * velocity).clamp(-1.0, 1.0)
        eps = (x - (1.0 - t) * x0) / t
        x = (1.0 - s) * x0 + s * eps
    return x


def sampling_grid(diffusion: torch.nn.Module, grid: str, sampling_steps: int) -> np.ndarray:
    """The descending timesteps at which the model is called."""
    num_timesteps = diffusion.num_timesteps
    if grid == "lucidrains":
        # ddim_sample: reversed(linspace(-1, T - 1, S + 1).int()) without its final -1.
        times = torch.linspace(-1, num_timesteps - 1, steps=sampling_steps + 1).int().tolist()
        return np.asarray(list(reversed(times))[:-1], dtype=np.int64)
    # diffjax's 'leading' spacing (diffjax/samplers/timesteps.py: spaced_timesteps).
    return np.arange(sampling_steps)[::-1] * (num_timesteps // sampling_steps)


@torch.inference_mode()
def ddim_on_grid(diffusion: torch.nn.Module, timesteps: np.ndarray, batch: int) -> torch.Tensor:
    """Deterministic DDIM with lucidrains' update (clipped x0, eps re-derived) on a given grid;
    the output is the x0-prediction at the last grid point."""
    x = torch.randn((batch, diffusion.channels, *diffusion.image_size))
    alphas_cumprod = diffusion.alphas_cumprod
    for i, t in enumerate(timesteps.tolist()):
        t_batch = torch.full((batch,), t, dtype=torch.long)
        eps, x0, *_ = diffusion.model_predictions(
            x, t_batch, None, clip_x_start=True, rederive_pred_noise=True
        )
        if i == len(timesteps) - 1:
            return x0
        alpha_next = alphas_cumprod[int(timesteps[i + 1])]
        x = alpha_next.sqrt() * x0 + (1.0 - alpha_next).sqrt() * eps
    raise ValueError("empty sampling grid")


def sample(
    diffusion: torch.nn.Module,
    *,
    num_samples: int,
    batch_size: int,
    seed: int,
    grid: str,
    flow: bool = False,
) -> tuple[np.ndarray, float]:
    """Draws NHWC samples in [-1, 1] with the given Unet's DDIM (``flow``: its Euler sampler);
    returns them and the seconds."""
    diffusion.eval()
    torch.manual_seed(seed)
    timesteps = sampling_grid(diffusion, grid, diffusion.sampling_timesteps)
    chunks = []
    start = time.perf_counter()
    done = 0
    while done < num_samples:
        batch = min(batch_size, num_samples - done)
        if flow:
            out = flow_euler(diffusion.model, batch, diffusion.sampling_timesteps)
        elif grid == "lucidrains":
            out = diffusion.ddim_sample((batch, diffusion.channels, *diffusion.image_size))
        else:
            out = ddim_on_grid(diffusion, timesteps, batch)
        chunks.append(out.clamp(-1.0, 1.0).permute(0, 2, 3, 1).numpy().astype(np.float32))
        done += batch
        elapsed = time.perf_counter() - start
        print(f"sampled {done}/{num_samples}  {elapsed:.1f} s", flush=True)
    return np.concatenate(chunks), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="Training steps.")
    parser.add_argument("--batch-size", type=int, default=64, help="Training batch.")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--sample-batch-size", type=int, default=250)
    parser.add_argument("--sampling-steps", type=int, default=50)
    parser.add_argument("--grid", choices=("lucidrains", "leading"), default="lucidrains")
    parser.add_argument(
        "--objective", choices=("eps", "flow"), default="eps",
        help="eps: lucidrains' DDPM loss and DDIM; flow: a rectified flow and Euler's method.",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--out", default=None, help="The samples .npz (default: see above).")
    parser.add_argument("--checkpoint-out", default=None, help="Where to write the checkpoint.")
    parser.add_argument(
        "--checkpoint", default=None, help="Skip training; sample from this checkpoint."
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.num_samples < 1:
        parser.error("--steps, --batch-size and --num-samples must be >= 1")
    if not 1 <= args.sampling_steps <= RECIPE["num_timesteps"]:
        parser.error(f"--sampling-steps must lie in [1, {RECIPE['num_timesteps']}]")

    torch.set_num_threads(args.threads)
    flow = args.objective == "flow"
    if args.out is None:
        args.out = DEFAULT_OUT.replace("_fmnist_", "_fmnist_flow_") if flow else DEFAULT_OUT
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    checkpoint_name = "peer_lucidrains_fmnist_flow.pt" if flow else "peer_lucidrains_fmnist.pt"
    checkpoint_out = args.checkpoint_out or os.path.join(out_dir, checkpoint_name)

    from ema_pytorch import EMA

    lucidrains = import_lucidrains()
    torch.manual_seed(args.seed)
    unet = lucidrains.Unet(**UNET_KWARGS)
    diffusion = build_diffusion(lucidrains, unet, args.sampling_steps)
    check_matches_recipe(diffusion)
    params = count_params(unet)
    ema = EMA(
        unet,
        beta=RECIPE["ema_decay"],
        update_after_step=0,
        update_every=1,
        inv_gamma=EMA_INV_GAMMA,
        power=EMA_POWER,
        include_online_model=False,
        use_foreach=True,
    )
    print(f"lucidrains Unet {UNET_KWARGS}: {params:,} parameters, {args.threads} threads")

    if args.checkpoint is None:
        images = load_train_images(args.data_dir)
        ema.update()  # Copies the initial weights (diffjax starts its EMA from them).
        result = train(
            diffusion,
            ema,
            images,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            log_every=args.log_every,
            flow=flow,
        )
        training = {k: v for k, v in result.items() if k not in ("log", "optimizer")}
        training.update(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
        checkpoint = dict(
            objective=args.objective,
            unet=unet.state_dict(),
            ema_unet=ema.ema_model.state_dict(),
            ema=ema.state_dict(),
            optimizer=result["optimizer"],
            unet_kwargs=UNET_KWARGS,
            recipe=RECIPE,
            training=training,
        )
        tmp = checkpoint_out + ".tmp"
        torch.save(checkpoint, tmp)
        os.replace(tmp, checkpoint_out)
        log_path = os.path.splitext(checkpoint_out)[0] + "_log.json"
        with open(log_path + ".tmp", "w") as f:
            json.dump(dict(training=training, log=result["log"]), f, indent=1)
        os.replace(log_path + ".tmp", log_path)
        print(f"wrote {checkpoint_out} and {log_path}", flush=True)
    else:
        checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        if checkpoint["unet_kwargs"] != UNET_KWARGS:
            raise ValueError(f"checkpoint Unet {checkpoint['unet_kwargs']} != {UNET_KWARGS}")
        if checkpoint.get("objective", "eps") != args.objective:
            raise ValueError(f"checkpoint objective {checkpoint.get('objective', 'eps')!r} != "
                             f"--objective {args.objective!r}")  # fmt: skip
        ema.ema_model.load_state_dict(checkpoint["ema_unet"])
        training = checkpoint["training"]
        print(f"loaded {args.checkpoint} ({training['steps']} training steps)", flush=True)

    sampler_diffusion = build_diffusion(lucidrains, ema.ema_model, args.sampling_steps)
    samples, sample_seconds = sample(
        sampler_diffusion,
        num_samples=args.num_samples,
        batch_size=args.sample_batch_size,
        seed=args.seed,
        grid=args.grid,
        flow=flow,
    )
    if flow:
        timesteps = np.linspace(1000, 0, args.sampling_steps + 1)[:-1]
    else:
        timesteps = sampling_grid(sampler_diffusion, args.grid, args.sampling_steps)
    meta = dict(
        peer="lucidrains",
        model="denoising_diffusion_pytorch.Unet",
        unet_kwargs=UNET_KWARGS,
        params=params,
        steps=training["steps"],
        batch_size=training["batch_size"],
        train_seed=training["seed"],
        train_seconds=training["train_seconds"],
        train_images_per_second=training["images_per_second"],
        final_loss=training["final_loss"],
        final_loss_mean=training["final_loss_mean"],
        objective=args.objective,
        sampler="flow_euler" if flow else "ddim",
        eta=0.0,
        sampling_steps=args.sampling_steps,
        grid="uniform" if flow else args.grid,
        clip_x0=True,
        weights="ema",
        seed=args.seed,
        num_samples=args.num_samples,
        sample_seconds=sample_seconds,
        samples_per_second=args.num_samples / sample_seconds,
        torch_threads=args.threads,
        versions={
            name: metadata.version(name)
            for name in ("torch", "denoising-diffusion-pytorch", "ema-pytorch")
        },
        recipe=RECIPE,
    )
    scalars = {
        key: np.asarray(value)
        for key, value in meta.items()
        if isinstance(value, (int, float, str, bool))
    }
    tmp = args.out + ".tmp.npz"
    np.savez(
        tmp,
        samples=samples,
        timesteps=timesteps.astype(np.int32),
        metadata=np.asarray(json.dumps(meta)),
        **scalars,
    )
    os.replace(tmp, args.out)
    png = os.path.splitext(args.out)[0] + ".png"
    save_grid(samples, png)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("recipe", "versions")}))
    print(f"wrote {args.out} and {png}", flush=True)


if __name__ == "__main__":
    main()
