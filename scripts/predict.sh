#!/usr/bin/env bash
# Classify MRI slices with the released model (models/capsnet-figshare.onnx, from capsule_classifier/release.py;
# $BRAIN_TUMOUR_MODEL names another) or with the model.pt / .onnx given first:
#
#   ./scripts/predict.sh [MODEL] INPUT [INPUT ...] [--out FILE.csv|FILE.json] [--json] [--strict] [--explain DIR]
#
# Runs capsule_classifier/predict.py with the repository's .venv when there is one (else python3), from any
# folder: paths are taken relative to where you are. Every argument is passed through.
set -euo pipefail
repo="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
python="$repo/.venv/bin/python"
[ -x "$python" ] || python=python3
if ! "$python" -c "import numpy, onnxruntime, torch" 2>/dev/null; then
  echo "predict.sh: error: $python lacks the dependencies; run once: bash scripts/setup.sh" >&2
  exit 2
fi
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" "$repo/capsule_classifier/predict.py" "$@"
