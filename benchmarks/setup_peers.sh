#!/usr/bin/env bash
# Creates benchmarks/.peers-venv: the PyTorch libraries diffjax is measured and cross-checked
# against (diffusers, lucidrains' denoising-diffusion-pytorch, torch-fidelity, pytorch-fid,
# lpips, torchvision's models), in a virtual environment of their own so that torch never
# enters the diffjax environment. Nothing in diffjax's install, tests or CI needs it: the port
# checks commit their fixtures (tests/fixtures/) with the scripts that made them.
#
# Usage:  bash benchmarks/setup_peers.sh            (idempotent; about 1.5 GB, a few minutes)
#         PEERS_PYTHON=python3.11 bash benchmarks/setup_peers.sh
#
# Pins and why:
# - torch==2.13.0 first, then a constraints file: on the project machines that version resolves
#   to a local CPU build; anything that depends on torch installed before it, or any other torch
#   spec, pulls the multi-GB CUDA build.
# - torchvision, denoising-diffusion-pytorch and the metric packages with --no-deps: they
#   require torchvision, whose PyPI wheel for torch 2.13.0 (0.28.0) is a CUDA build. Its
#   compiled extension is deleted; its pure-Python models then work on the CPU torch once
#   benchmarks/peers/tvshim.py (imported at start-up through a .pth line) has declared the two
#   operators whose fake kernels torchvision registers at import.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.peers-venv"
python="${PEERS_PYTHON:-python3}"

if [[ ! -x "${venv}/bin/python" ]]; then
  "${python}" -m venv "${venv}"
fi
pip=("${venv}/bin/python" -m pip install --quiet --disable-pip-version-check)

"${pip[@]}" "torch==2.13.0"
echo "torch==2.13.0" > "${venv}/constraints.txt"
"${pip[@]}" -c "${venv}/constraints.txt" "diffusers==0.42.1" accelerate einops \
  "ema-pytorch>=0.4.2" numpy pillow scipy tqdm safetensors packaging "peft==0.21.2"
"${pip[@]}" --no-deps "torchvision==0.28.0" "denoising-diffusion-pytorch==2.3.4" \
  "torch-fidelity==0.4.0" "pytorch-fid==0.3.0" "lpips==0.1.4"
site="$(echo "${venv}"/lib/python3*/site-packages)"
rm -f "${site}"/torchvision/_C*.so
cp "${here}/peers/tvshim.py" "${site}/tvshim.py"
echo "import tvshim" > "${site}/tvshim.pth"

"${venv}/bin/python" - <<'PY'
import importlib.metadata as md

import diffusers, lpips, pytorch_fid, torch, torch_fidelity, torchvision  # noqa: F401

for name in ("torch", "torchvision", "diffusers", "denoising-diffusion-pytorch",
             "torch-fidelity", "pytorch-fid", "lpips", "numpy"):
    print(f"{name}=={md.version(name)}")
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
echo "peers venv ready: ${venv}/bin/python"
