#!/usr/bin/env bash
# The peers the benchmarks run side by side, kept apart from mmsearch's own environment:
#   rclip in its own virtual environment (it pins numpy and onnxruntime versions of its own);
#   autofaiss without its dependencies (it pins numpy<2, yet runs on numpy 2 with the faiss we have).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .rclip-venv/bin/rclip ] || { python -m venv .rclip-venv && .rclip-venv/bin/pip install -q rclip==3.3.0; }
python -c "import sys; sys.path.insert(0, '.peers'); import autofaiss" 2>/dev/null ||
  pip install -q --no-deps --target .peers autofaiss==2.18.0 embedding-reader==1.8.1 fire==0.7.1 termcolor==2.5.0
echo "peers ready: $(.rclip-venv/bin/rclip --version), autofaiss in benchmarks/.peers"
