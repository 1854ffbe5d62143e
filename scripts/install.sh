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
# The archive's S3 tests run OpenStack Swift with s3api on loopback (test/support/swift-s3.ts):
# Debian's python3-swift (checked with Debian's own python, not one first in PATH) and memcached.
/usr/bin/python3 -c 'import swift' >/dev/null 2>&1 || need+=(python3-swift)
command -v memcached >/dev/null 2>&1 || need+=(memcached)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    # A policy-rc.d that answers 101 keeps the packages from starting services (a system
    # memcached); the tests start their own. Removed again however the install ends.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
      trap '[ -n "$own_policy" ] && rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    if [ -n "$own_policy" ]; then rm -f "$policy"; own_policy=; fi
  else
    echo "missing Debian packages (run as root to install): ${need[*]}" >&2
  fi
fi
# npm ci deletes node_modules before it installs; through a symbolic link (a tree shared with
# another checkout) that empties the tree it points to. Such a checkout keeps what it links to.
if [ -L node_modules ]; then
  echo "node_modules is a symbolic link to $(readlink -f node_modules): not reinstalling there (npm ci would empty it); if the build fails, give this checkout its own node_modules" >&2
elif [ ! -d node_modules ] || [ package.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund || npm install --no-audit --no-fund
fi
npm run build
touch dist/.built # scripts/up starts without building until a source is newer
