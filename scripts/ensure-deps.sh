#!/usr/bin/env bash
# Install the Debian packages fastivc's build and tests need, when missing.
# Safe to run repeatedly: it only calls apt-get when something is absent.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have cc || need+=(gcc)
have g++ || true
have clang || need+=(clang)
# libFuzzer's runtime for clang (the fuzz test)
if have clang; then
  v=$(clang -dumpversion | cut -d. -f1)
  ls /usr/lib/llvm-"$v"/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 \
    || need+=("libclang-rt-$v-dev")
else
  need+=(libclang-rt-14-dev)
fi
have nm || need+=(binutils)
have ip || need+=(iproute2)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# real programs the tests run under fastivc
have iperf3 || need+=(iperf3)
have sockperf || need+=(sockperf)
have curl || need+=(curl)
have redis-server || need+=(redis-server)
have nginx || need+=(nginx-light)
have wrk || need+=(wrk)
have memcached || need+=(memcached)
have node || need+=(nodejs)
# PostgreSQL server, pgbench and psql (test_eventloops.py)
ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 || need+=(postgresql)
# the app tier of `fastivc bench tiers` (tests/test_tiers.py): gunicorn with
# Debian's Python clients for redis and PostgreSQL
have gunicorn || need+=(gunicorn)
/usr/bin/python3 -c 'import redis' >/dev/null 2>&1 || need+=(python3-redis)
/usr/bin/python3 -c 'import psycopg2' >/dev/null 2>&1 || need+=(python3-psycopg2)
have ss || need+=(iproute2)
# io_uring programs the downgrade tests build (test_downgrade.py)
[ -e /usr/include/liburing.h ] || need+=(liburing-dev)
# fastivc vm: QEMU, and a static busybox for the guest's initramfs (the dynamic
# busybox package also installs /bin/busybox, so ask dpkg which one is there)
have qemu-system-x86_64 || need+=(qemu-system-x86)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' \
  || need+=(busybox-static)
have dpkg-deb || need+=(dpkg)

if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "fastivc: missing Debian packages: ${need[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "fastivc: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
