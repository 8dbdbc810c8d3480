#!/usr/bin/env bash
# The whole test suite: unit, property and simulation tests of every crate,
# and the multi-process tests (real escd processes on loopback addresses and
# in network namespaces; those need root). This is the command the README
# names and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
# The multi-host tests drive `escadm` as an operator would: build every
# binary first (cargo test alone does not produce target/debug/escadm).
cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
