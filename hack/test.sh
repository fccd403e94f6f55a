#!/usr/bin/env bash
# The project's test command (README: "Run the tests"): lint, type-check, then the whole suite with
# coverage. bot/ must stay at 90% line coverage or more. Benchmarks live in tests/bench and run
# separately (see tests/bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ruff"
ruff check bot released operator tests hack
echo "== mypy"
mypy
echo "== pytest"
rm -f .coverage .coverage.*

python -m pytest --ignore=tests/bench --cov --cov-report= "$@"
coverage combine -q 2>/dev/null || true
coverage report --include='bot/*' --fail-under=90 --skip-covered
coverage report --include='operator/*' | grep '^TOTAL' | sed 's/^TOTAL/operator coverage (TOTAL)/'
