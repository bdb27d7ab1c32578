#!/usr/bin/env bash
# Idempotent setup: .venv with pinned requirements, visdom (its sdist needs setuptools<80 and
# --no-build-isolation), the project in editable mode. A stamp of the inputs makes a re-run take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
VISDOM_REQUIREMENT="visdom==0.2.4"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp_inputs() { cat requirements.txt pyproject.toml scripts/setup.sh; echo "$VISDOM_REQUIREMENT"; }
STAMP="$VENV/.setup-$(stamp_inputs | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "setup: installing into $VENV (first run or requirements changed)"
  python -m pip install --quiet --upgrade pip "setuptools<80" wheel
  python -m pip install --quiet -r requirements.txt
  python -m pip install --quiet --no-build-isolation "$VISDOM_REQUIREMENT"
  python -m pip install --quiet --no-build-isolation --no-deps -e .
  rm -f "$VENV"/.setup-*
  touch "$STAMP"
fi
# visdom's JavaScript/CSS/fonts from npm, checksummed against scripts/visdom_assets.lock.json (offline monitor)
python scripts/visdom_assets.py --check >/dev/null 2>&1 || python scripts/visdom_assets.py
# Debian's headless Chromium + chromedriver for tests/test_monitor_browser.py
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "setup: installing chromium and chromium-driver (apt)"
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
    >/dev/null || echo "setup: WARNING chromium not installed; the browser test fails unless ALLOW_NO_BROWSER=1" >&2
fi
echo "setup: ready ($(python -c 'import torch; print("torch", torch.__version__)'))"
