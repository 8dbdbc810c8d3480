#!/usr/bin/env bash
# Installs schemathesis (PyPI), the API fuzzer of bins/escd/tests/schemathesis.rs,
# pinned, into target/schemathesis (a virtualenv: nothing of the system's
# Python changes). .ci/run calls it; run it once before scripts/test.sh on
# a machine of your own. Needs python3 with venv (Debian: python3-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
venv=target/schemathesis
if [ -x "$venv/bin/schemathesis" ] && "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
"$venv/bin/schemathesis" --version
