#!/usr/bin/env bash
# Installs what Rewind and its tests need on Debian 12 with Node 20: the Debian packages of the
# real NBD clients and of the native addons' build (when missing, as root), then the npm packages,
# then builds. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# g++, make and python3 build the native npm addons (better-sqlite3, the mmap addon) from source;
# openssl and psktool (gnutls-bin) make the NBD TLS tests' certificates and PSK files; chromium
# runs the console's browser tests (playwright-core drives it; no browser is downloaded) and
# promtool (package prometheus) checks the format of GET /metrics.
for pair in nbdinfo:libnbd-bin nbdsh:python3-libnbd qemu-io:qemu-utils fio:fio fusermount3:fuse3 mkfs.ext4:e2fsprogs nbdkit:nbdkit fallocate:util-linux fsfreeze:util-linux blkid:util-linux setpriv:util-linux losetup:mount g++:g++ make:make python3:python3 openssl:openssl psktool:gnutls-bin chromium:chromium promtool:prometheus; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing Debian packages (run as root to install): ${need[*]}" >&2
  fi
fi
if [ ! -d node_modules ] || [ package.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund || npm install --no-audit --no-fund
fi
npm run build
touch dist/.built # scripts/up starts without building until a source is newer
