"""Shared pieces of the PyTorch peer benchmarks: model presets, the training step, FLOPs, RSS.

Runs only in benchmarks/.peers-venv (made by benchmarks/setup_peers.sh), never in the diffjax
environment. Two peers are measured, each at the two diffjax model sizes:

- ``diffusers``: Hugging Face ``UNet2DModel``. With the presets below it is the same DDPM
  architecture as ``diffjax.models.UNet`` and has exactly the same parameter count
  (1,623,169 for Fashion-MNIST, 35,746,307 for CIFAR-10).
- ``lucidrains``: ``denoising_diffusion_pytorch.Unet`` (RMSNorm, linear attention at the outer
  levels, full attention inside). Its nearest natural widths give 1.41M and 35.7M parameters.

The training step is the same work as diffjax's ``train_step``: draw t and noise, q_sample
(Ho et al. 2020, Eq. 4), eps-prediction MSE (Algorithm 1), backward, clip the global gradient
norm at 1, Adam, and an EMA of the weights.
"""

from __future__ import annotations

import dataclasses
import importlib
import resource
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# Batch, image side and channels of the two diffjax benchmark sizes.
SIZES = {
    "fashion_mnist": dict(batch_size=64, image_size=28, channels=1),
    "cifar10": dict(batch_size=128, image_size=32, channels=3),
}
PEERS = ("diffusers", "lucidrains")


@dataclasses.dataclass(frozen=True)
class TimingResult:
    """Wall-clock seconds of a repeated call.

    Attributes:
      first_seconds: the first call (oneDNN primitive creation, allocator warm-up).
      seconds: wall seconds of the timed calls after the warm-up ones.
      cpu_seconds: process CPU seconds (all threads) of the same calls.
    """

    first_seconds: float
    seconds: list[float]
    cpu_seconds: list[float]

    @property
    def median(self) -> float:
        """Median seconds per timed call."""
        return float(np.median(self.seconds))


def import_lucidrains() -> types.ModuleType:
    """Imports denoising_diffusion_pytorch although torchvision is not installed.

    Its top-level module imports ``torchvision.transforms`` and ``torchvision.utils`` for the
    image-folder Trainer only; the Unet never touches them. No CPU build of torchvision exists
    here, so empty stand-in modules are put in ``sys.modules`` for the duration of the import
    and removed again, so that no other library mistakes them for a real torchvision.

    Returns:
      The ``denoising_diffusion_pytorch`` module.
    """
    if "denoising_diffusion_pytorch" in sys.modules:
        return sys.modules["denoising_diffusion_pytorch"]
    names = ("torchvision", "torchvision.transforms", "torchvision.utils")
    stand_ins = {name: types.ModuleType(name) for name in names}
    stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]
    stand_ins["torchvision"].utils = stand_ins["torchvision.utils"]
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("denoising_diffusion_pytorch")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def build_model(peer: str, size: str, dropout: float = 0.1) -> torch.nn.Module:
    """Builds a peer UNet at one of the diffjax benchmark sizes.

    Args:
      peer: 'diffusers' or 'lucidrains'.
      size: 'fashion_mnist' (28x28x1) or 'cifar10' (32x32x3).
      dropout: dropout rate inside the ResNet blocks (DDPM: 0.1).

    Returns:
      A module called as ``model(x [B, C, H, W], t int64 [B]) -> eps [B, C, H, W]`` (wrapped
      so that both peers return a plain tensor).

    Raises:
      ValueError: for an unknown peer or size.
    """
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    channels = SIZES[size]["channels"]
    if peer == "diffusers":
        from diffusers import UNet2DModel

        # DDPM's UNet (Ho et al. 2020, App. B), as in the google/ddpm-cifar10-32 config;
        # attention_head_dim equal to the width gives DDPM's single head.
        if size == "fashion_mnist":
            config = dict(
                block_out_channels=(32, 64, 64),
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=64,
            )
        else:
            config = dict(
                block_out_channels=(128, 256, 256, 256),
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=256,
            )
        net = UNet2DModel(
            sample_size=SIZES[size]["image_size"],
            in_channels=channels,
            out_channels=channels,
            layers_per_block=2,
            norm_num_groups=32,
            dropout=dropout,
            **config,
        )
        return _SampleOutput(net)
    lucidrains = import_lucidrains()
    dim, dim_mults = (32, (1, 2, 2)) if size == "fashion_mnist" else (64, (1, 2, 4, 8))
    return lucidrains.Unet(dim=dim, dim_mults=dim_mults, channels=channels, dropout=dropout)


class _SampleOutput(torch.nn.Module):
    """Unwraps diffusers' ``UNet2DOutput`` so that every peer returns a tensor."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t).sample


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in model.parameters())


def linear_alphas_cumprod(num_timesteps: int = 1000) -> torch.Tensor:
    """DDPM's linear beta schedule (1e-4 to 0.02), as cumulative products, float32 [T]."""
    betas = np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64)
    return torch.from_numpy(np.cumprod(1.0 - betas).astype(np.float32))


def make_train_step(
    model: torch.nn.Module, *, learning_rate: float = 2e-4, ema_decay: float = 0.9999
) -> Callable[[torch.Tensor], float]:
    """The DDPM training step (Ho et al. 2020, Algorithm 1) with Adam, clipping and EMA.

    Args:
      model: a peer UNet from :func:`build_model`; put in train mode.
      learning_rate: Adam's learning rate.
      ema_decay: decay of the weight EMA updated after every step.

    Returns:
      ``step(x0 [B, C, H, W]) -> loss`` doing one forward + backward + optimizer step.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    # foreach=True: the multi-tensor Adam that PyTorch picks by default on GPU; on CPU the
    # default is the per-parameter loop, which is slower for many small tensors.
    optimizer = torch.optim.Adam(params, lr=learning_rate, foreach=True)
    alphas_cumprod = linear_alphas_cumprod()
    generator = torch.Generator().manual_seed(0)

    def step(x0: torch.Tensor) -> float:
        batch = x0.shape[0]
        t = torch.randint(0, alphas_cumprod.shape[0], (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        abar = alphas_cumprod[t].view(batch, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
        loss = torch.nn.functional.mse_loss(model(x_t, t), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - ema_decay)
        return float(loss.detach())

    return step


def time_repeated(fn: Callable[[], Any], *, warmup: int, steps: int) -> TimingResult:
    """Times ``fn``: one first call, ``warmup - 1`` more untimed, then ``steps`` timed.

    Args:
      fn: the work of one step; must block until done (PyTorch on CPU always does).
      warmup: untimed calls, including the first one (>= 1).
      steps: timed calls (>= 1).

    Returns:
      The :class:`TimingResult`.
    """
    if warmup < 1 or steps < 1:
        raise ValueError(f"warmup and steps must be >= 1, got warmup={warmup}, steps={steps}")
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    seconds, cpu_seconds = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - start_cpu)
    return TimingResult(first_seconds=first, seconds=seconds, cpu_seconds=cpu_seconds)


def training_flops_per_image(model: torch.nn.Module, x0: torch.Tensor) -> dict[str, float]:
    """Model FLOPs of one forward and one forward + backward, per image.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 x multiply-adds of the matmuls,
    convolutions and attention (the "model FLOPs" of MFU), not the elementwise work.

    Args:
      model: a peer UNet.
      x0: an input batch [B, C, H, W].

    Returns:
      ``{'forward': ..., 'train': ...}`` FLOPs per image.
    """
    from torch.utils.flop_counter import FlopCounterMode

    t = torch.zeros(x0.shape[0], dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(x0, t)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model(x0, t).square().mean().backward()
    model.zero_grad(set_to_none=True)
    train = counter.get_total_flops()
    return {"forward": forward / x0.shape[0], "train": train / x0.shape[0]}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def environment() -> dict[str, str]:
    """Versions and thread count of this process's PyTorch stack."""
    import importlib.metadata as metadata

    versions = {}
    for name in ("torch", "diffusers", "denoising-diffusion-pytorch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["torch_threads"] = str(torch.get_num_threads())
    return versions
