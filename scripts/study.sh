#!/usr/bin/env bash
# Study v2 (issue 17): the study's rows x protocols x sizes x seeds x folds as resumable jobs, N side by side,
# then one report (benchmarks/study.py documents rows, jobs, layout and the compute-matched control's rule).
#
#   ./scripts/study.sh --plan data.root=../shared/data           # every job and its estimated CPU time; runs nothing
#   mkdir -p runs && nohup ./scripts/study.sh data.root=../shared/data jobs=2 > runs/study-v2.log 2>&1 &
#   ./scripts/study.sh [--plan] [rows=capsnet-real,capsnet-synthetic,capsnet-control,resnet50-real,resnet50-synthetic]
#       [protocols=cvind,grouped] [sizes=128,256] [seeds=0,1,2] [folds=0,1,...] [jobs=2] [threads=1]
#       [out=runs/study-v2/DATA] [external=runs/external/glioma] [data.root=PATH] [data.KEY=VALUE ...]
#       [gan.KEY=VALUE ... (to scripts/synthesize.sh)] [KEY=VALUE ... (to capsule_classifier/train.py)] [--debug]
#
# Default grid: capsnet-real at 128 and 256 px, capsnet-synthetic and capsnet-control at 128 px, each on cvind
# (5 folds, primary) and grouped (7 folds by subject) with seeds 0 1 2; resnet50-real and resnet50-synthetic on
# cvind, seed 0, cpu_bf16=true. protocols=, sizes=, seeds= replace the grid of every selected row; folds= keeps
# only those folds. out= defaults to runs/study-v2/<"sample", or the name of data.root's folder>. Each job runs
# with OMP_NUM_THREADS=threads and logs to <out>/logs/; the report is <out>/report/report.md. Re-running the same
# command (after a crash, SIGKILL or reboot) skips finished jobs and resumes the rest; a second driver on the same
# out= is refused while the first or any of its jobs still runs. SIGTERM or SIGINT to the driver stops its jobs.
# A bad setting stops it with one line and exit status 2 (--debug: traceback); a failed job gives exit status 1
# after the others finish, with its log named.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
. .venv/bin/activate
exec python benchmarks/study.py "$@"
