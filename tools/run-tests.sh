#!/usr/bin/env bash
# The test suite: lint (ruff), types (mypy), then pytest — with real kademlia nodes, real TCP
# sessions on 127.0.0.1 and real llama.cpp on a tiny GGUF and on the default model.
# Arguments go to pytest (e.g. -k dht, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/_env.sh
gpunet_env dev
if ! command -v chromium >/dev/null 2>&1; then
  # the dashboard test drives headless Chromium (Debian's package)
  echo "==> installing chromium for the dashboard test"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null
  fi
fi
# The NAT tests (tests/netns/) build network namespaces with routers doing iptables/nftables NAT
# and Debian's miniupnpd as a real UPnP-IGD. They need root; as root, install what is missing.
# miniupnpd-iptables is the daemon alone: unlike the `miniupnpd` package it asks no debconf
# questions and installs no service, so no system-wide daemon runs (the lab starts its own in
# each router namespace, with its own config file).
if [ "$(id -u)" -eq 0 ]; then
  missing=""
  command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
  command -v iptables-legacy >/dev/null 2>&1 || missing="$missing iptables"
  command -v nft >/dev/null 2>&1 || missing="$missing nftables"
  [ -x /usr/sbin/miniupnpd ] || missing="$missing miniupnpd-iptables"
  # the service unit test (tests/p2p/cli/test_service.py) runs systemd-analyze verify
  command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
  if [ -n "$missing" ]; then
    echo "==> installing$missing for the network-namespace (NAT) and service tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
      >/dev/null
  fi
fi
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$code"
