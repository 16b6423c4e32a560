#!/usr/bin/env bash
# Installs what building, running and testing the gateway needs on Debian 12, and
# nothing when it is all there already. Called by the Makefile; safe to re-run.
set -euo pipefail

packages=(
	build-essential cmake pkg-config git
	librdkafka-dev libevent-dev libjansson-dev libpq-dev libssl-dev
	postgresql postgresql-client
	curl openssl wrk jq python3
	iproute2 procps bc # ss (test ports), pkill/pgrep, bench arithmetic: absent on minimal images
	clang clang-format libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing packages: ${missing[*]}" >&2
	echo "install-deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's postgresql package starts a system cluster on 5432; the gateway runs its
# own private cluster and does not need it.
if command -v pg_lsclusters >/dev/null 2>&1; then
	pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
		pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
	done
fi
