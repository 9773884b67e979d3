#!/usr/bin/env bash
# Runs the test suite on CPU (the README's test command). Extra args go to pytest,
# e.g. `bash launch/test.sh --runslow` or `bash launch/test.sh tests/test_protocol.py`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m pytest -q "$@"
