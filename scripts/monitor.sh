#!/usr/bin/env bash
# Start a visdom server on 127.0.0.1 that works offline, then watch runs at the printed URL.
#   ./scripts/monitor.sh [PORT]        (or VISDOM_PORT=8097; saved envs go to VISDOM_ENV_PATH)
# setup.sh provisions visdom's JavaScript/CSS/fonts from npm once; the server is started through
# visdom.server.run_server.main, which, unlike `python -m visdom.server`, never calls the CDN downloader.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-${VISDOM_PORT:-8097}}
ENV_PATH=${VISDOM_ENV_PATH:-runs/visdom}
bash scripts/setup.sh >/dev/null  # also provisions visdom's assets
# shellcheck disable=SC1091
. .venv/bin/activate
mkdir -p "$ENV_PATH"
echo "monitor: visdom at http://127.0.0.1:${PORT} (env files in ${ENV_PATH}; Ctrl-C stops it)"
echo "monitor: train with monitor.port=${PORT}; replay a run with: python -m experiment.replay RUN_DIR --port ${PORT}"
exec python -c 'from visdom.server.run_server import main; main()' \
  -port "$PORT" --hostname 127.0.0.1 -bind_local -env_path "$ENV_PATH" -logging_level WARNING
