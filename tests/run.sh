#!/usr/bin/env bash
# The project's test command (called by `make test` and CI): the whole suite, slow tests included.
# pytest exits 5 when it collected no test; that is a failure here like any other non-zero code.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
python -m pytest --durations=25 "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "tests/run.sh: pytest collected no tests" >&2
fi
exit "$status"
