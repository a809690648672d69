"""Lets ``import torchvision`` work under the CPU build of torch (imported at start-up).

benchmarks/setup_peers.sh installs PyPI's torchvision (a CUDA build) without its compiled
extension, and writes a ``.pth`` line that imports this module first in every interpreter of the
peer venv. Without the extension, importing torchvision fails only where it registers fake
kernels for two detection operators, ``nms`` and ``qnms``; declaring their schemas here lets it
import. The models the benchmarks use (inception_v3, alexnet, vgg16) need neither operator.
"""

import torch

_LIBRARY = torch.library.Library("torchvision", "DEF")
_LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")

import torchvision  # noqa: E402,F401
