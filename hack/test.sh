#!/usr/bin/env bash
# The project's test command (README: "Run the tests"): install what the tests need
# (hack/deps.sh: idempotent, about a second when all is there; RELEASED_SKIP_DEPS=1 skips it),
# lint, type-check, then the whole suite with coverage. bot/ and operator/ must each stay at 90%
# line coverage or more. Benchmarks live in tests/bench and run separately (see
# tests/bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
export PYTHON
if [[ "${RELEASED_SKIP_DEPS:-}" != 1 ]]; then
  echo "== dependencies (hack/deps.sh)"
  bash hack/deps.sh
fi

echo "== ruff"
"$PYTHON" -m ruff check bot released operator tests hack
echo "== mypy"
"$PYTHON" -m mypy
echo "== pytest"
rm -f .coverage .coverage.*

"$PYTHON" -m pytest --ignore=tests/bench --cov --cov-report= "$@"
"$PYTHON" -m coverage combine -q 2>/dev/null || true
status=0
"$PYTHON" -m coverage report --include='bot/*' --fail-under=90 --skip-covered || status=1
"$PYTHON" -m coverage report --include='operator/*' --fail-under=90 --skip-covered || status=1
exit "$status"
