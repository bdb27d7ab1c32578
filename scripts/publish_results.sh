#!/usr/bin/env bash
# Copy a protocol run's results (reports, per-fold summaries, generator summaries; no checkpoints, shards or
# ONNX files) into the repository, e.g. for docs/results/:
#   ./scripts/publish_results.sh runs/study/grouped-k7 docs/results/grouped-k7
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 PROTOCOL_OUT DEST" >&2; exit 2; }
src=${1%/}
[ -d "$src" ] || { echo "publish_results.sh: $src is not a folder" >&2; exit 2; }
mkdir -p "$2"
dest=$(cd "$2" && pwd)
cd "$src"
find . \( -path './report/*' \( -name '*.md' -o -name '*.json' -o -name '*.png' \) \) \
  -o \( -path './classifier/*' -name summary.json \) \
  -o \( -path './generator/*' \( -name summary.json -o -name quality.json -o -name 'quality-*.png' \) \) \
  -o \( -path './shards/*' \( -name manifest.json -o -name consistency.json \) \) |
while read -r file; do
  mkdir -p "$dest/$(dirname "$file")"
  cp "$file" "$dest/$file"
done
echo "published $(find "$dest" -type f | wc -l) files to $dest"
