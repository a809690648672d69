#!/usr/bin/env bash
# Creates benchmarks/.peers-venv: the PyTorch peers that benchmarks/compare.py measures diffjax
# against (Hugging Face diffusers and lucidrains' denoising-diffusion-pytorch), in a virtual
# environment of their own so that torch never enters the diffjax environment.
#
# Usage:  bash benchmarks/setup_peers.sh            (idempotent; about 1 GB, a minute or two)
#         PEERS_PYTHON=python3.11 bash benchmarks/setup_peers.sh
#
# Pins and why:
# - torch==2.13.0 exactly: on the project machines a CPU wheel of that version is served locally;
#   any other torch spec resolves to the registry's newest CUDA build (several GB).
# - denoising-diffusion-pytorch is installed with --no-deps: it declares torchvision and
#   pytorch-fid, for which no CPU build exists here. Its Unet needs neither; its module imports
#   `torchvision.transforms/utils` only for the image Trainer, so the benchmark scripts put an
#   empty stand-in module in sys.modules before importing it (see benchmarks/peers/common.py).
#   Its remaining real dependencies are installed explicitly below.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.peers-venv"
python="${PEERS_PYTHON:-python3}"

if [[ ! -x "${venv}/bin/python" ]]; then
  "${python}" -m venv "${venv}"
fi
pip=("${venv}/bin/python" -m pip install --quiet --disable-pip-version-check)

"${pip[@]}" "torch==2.13.0"
# With torch 2.13.0 present, these resolve without pulling another torch.
"${pip[@]}" "diffusers>=0.30" "accelerate" "einops" "ema-pytorch>=0.4.2" "scipy" "tqdm" \
  "pillow" "numpy" "packaging"
"${pip[@]}" --no-deps "denoising-diffusion-pytorch>=2.0"

"${venv}/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
for name in ("torch", "diffusers", "denoising-diffusion-pytorch", "accelerate", "numpy"):
    print(f"{name}=={md.version(name)}")
assert torch.__version__.startswith("2.13.0"), torch.__version__
EOF
echo "peers venv ready: ${venv}/bin/python"
