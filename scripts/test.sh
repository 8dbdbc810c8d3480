#!/usr/bin/env bash
# The whole test suite: unit, property and simulation tests of every crate,
# and the multi-process tests (real escd processes on loopback addresses).
# This is the command the README names and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"
