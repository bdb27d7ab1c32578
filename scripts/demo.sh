#!/usr/bin/env bash
# The whole pipeline on the embedded sample (or data.root=PATH), small enough for a 2-core CPU (< 10 min):
# data + grouped folds -> per fold: pix2pix generator + synthetic shards -> capsnet pretrained on them,
# fine-tuned on real training patients, selected on validation, tested once -> cross-validation report ->
# ONNX export -> prediction on a real slice -> a 3D model on the embedded NIfTI volumes (datasets/data/volumes).
# Every step runs on a fresh clone without ../shared; progress goes to the log as plain lines when piped.
#
#   ./scripts/demo.sh                              # embedded samples, 64 px, 3 folds
#   ./scripts/demo.sh data.root=../shared/data     # the full 2D bundle (same small budget; slower)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

out=runs/demo
data_args=("data.image_size=64" "data.k=3" "$@")
echo "== 1/5 data and folds"
python -m datasets.inspect "${data_args[@]}" "out=$out/inspect"

echo "== 2/5 cross-validation: generator + synthesis, capsnet pretrain + fine-tune + test, report, export"
bash scripts/cross_validate.sh model=capsnet synthetic=true "${data_args[@]}" "out=$out/protocol" \
  gan.train.epochs=1 gan.train.epochs_decay=1 gan.net.ngf=16 gan.net.ndf=16 gan.condition.crop_size=32 \
  gan.count=900 \
  train.epochs=20 train.patience=8 pretrain.epochs=3 monitor.visdom=false

report=$out/protocol/report/capsnet-synthetic
echo "== 3/5 predict on a real slice with the exported ONNX model"
sample=$(ls ../shared/data/samples_jpg/2_*.jpg 2>/dev/null | head -1 || true)
if [ -z "$sample" ]; then  # no ../shared: the first glioma slice of the embedded 2D sample
  sample=$out/sample_slice.npy
  python -c "import numpy as np, sys; from datasets.core import EMBEDDED_SAMPLE; z = np.load(EMBEDDED_SAMPLE); \
np.save(sys.argv[1], z['image'][np.flatnonzero(z['label'] == 2)[0]])" "$sample"
fi
python capsule_classifier/predict.py "$report/model.onnx" "$sample"

echo "== 4/5 3D spatiospatial model on the embedded sample volumes (datasets/data/volumes)"
python spatiospatial/run.py model=mc3_18 "data.shape=[32,32,32]" "data.spacing=[6,6,6]" train.epochs=1 \
  monitor.visdom=false "out=$out/spatiospatial"

echo "== 5/5 report ($report/report.md)"
cat "$report/report.md"
