#!/usr/bin/env bash
# QLoRA on a GPU, packing off and on (see gpu_qlora.py); under 8 minutes on one H100/H200.
# Extra arguments go to the script, e.g. `benchmarks/gpu_qlora.sh --attn flash_attention_2`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_qlora.py "$@"
