#!/usr/bin/env bash
# The demo (README's first command): builds the release binaries, then
# `esc-lab demo` brings up an HA pair (esc-1, esc-2) and its witness in
# network namespaces, configured with `escadm ha set` + `escadm reload` as an
# operator would, with the lab's VIM (esc-vim) on a host of its own, runs a
# client writing through the VIP, deploys a few VNFs and cuts the primary's
# power while they are being deployed (every process killed, link down),
# shows them reach SERVICE_ACTIVE_STATE on the new primary with one server
# per VM on the VIM, shows live who is primary, where
# the VIP is and the write rate, lets the old primary rejoin, prints the
# checker's verdict (every acknowledged write on both nodes, none twice, the
# interruption), and removes everything it created.
#
#   scripts/demo.sh           # as root: namespaces, raw sockets, addresses
#
# Needs: a Rust toolchain, iproute2, nftables (as .ci/run installs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: needs root (network namespaces, raw VRRP sockets): run it as root, e.g. 'sudo scripts/demo.sh', or 'su -c scripts/demo.sh' where there is no sudo" >&2
  exit 2
fi
for tool in ip nft; do
  command -v "$tool" >/dev/null || { echo "demo.sh: '$tool' is missing: apt-get install -y iproute2 nftables" >&2; exit 2; }
done
cargo build --release -q -p escd -p escadm -p esc-lab-cli -p esc-vim-cli -p esc-vnf
# A lab left by an interrupted earlier run is removed first.
target/release/esc-lab down >/dev/null
exec target/release/esc-lab --bins target/release demo
