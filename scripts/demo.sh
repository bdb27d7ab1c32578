#!/usr/bin/env bash
# The main job on the embedded sample (or data.root=PATH): data, grouped folds, shard round trip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m datasets.inspect "$@"
