#!/usr/bin/env bash
# Chart tests: lints and renders charts/wasmpod with the real Helm engine (PyPI
# helm-python-sdk), checks every rendered object parses into its k8s-openapi type
# (wasmpod-installer check-manifests) and that deploy/ matches the chart.
#   charts/test.sh            run the tests
#   UPDATE=1 charts/test.sh   regenerate deploy/wasmpod.yaml from the chart first
# No root, no cluster. The virtualenv lives in $WASMPOD_VENV (default /var/tmp/wasmpod-venv).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${WASMPOD_VENV:-/var/tmp/wasmpod-venv}
if ! "$VENV/bin/python" -c 'import helm_python, yaml, pytest' 2>/dev/null; then
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install -q -r "$ROOT/charts/requirements.txt"
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build -q ${CARGO_BUILD_JOBS:+-j$CARGO_BUILD_JOBS} -p wasmpod-installer)
export WASMPOD_INSTALLER=${WASMPOD_INSTALLER:-$TARGET/debug/wasmpod-installer}
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider charts/test_chart.py "$@"
