#!/bin/sh
# make sanitize: the preload library built with ASan and UBSan, preloaded
# under the tests that run real programs (Redis, memcached, iperf3,
# sockperf, node, asyncio...), the upgrade, process-model and peer-death
# tests.  Any
# sanitizer report fails the run, even one from a process whose exit status
# the test does not look at: the reports go to files, and the run fails if
# any file is there at the end.
set -eu
cd "$(dirname "$0")/.."
BDIR=build/sanitize
LOGS=$BDIR/reports
cmake -S . -B "$BDIR" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	-DFASTIVC_SANITIZE=address,undefined >/dev/null
cmake --build "$BDIR" --target fastivc -j"$(nproc)" >/dev/null
rm -rf "$LOGS" && mkdir -p "$LOGS"
asan=$(gcc -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "sanitize: gcc has no libasan.so ($asan)" >&2; exit 1; }
# the runtime first (ASan must be the first DSO), our library last
export FASTIVC_LIB="$(readlink -f "$asan"):$PWD/$BDIR/libfastivc.so"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=23:verify_asan_link_order=0:log_path=$PWD/$LOGS/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=24:log_path=$PWD/$LOGS/ubsan"
# curl and postgres hang in glibc's setlocale at start-up under a preloaded
# ASan runtime, with or without fastivc (LD_PRELOAD=libasan.so curl
# --version never returns here), so the tests that run them are left out:
# curl against http.server, nginx with curl and wrk, PostgreSQL.
status=0
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m pytest -q -rs -p no:cacheprovider \
	-k "not test_curl_against_python_http_server and not test_nginx_workers_with_curl_and_wrk and not test_postgresql" \
	tests/test_real_programs.py tests/test_eventloops.py tests/test_peer_death.py \
	tests/test_upgrade.py tests/test_process.py "$@" || status=$?
reports=$(ls "$LOGS")
if [ -n "$reports" ]; then
	for f in "$LOGS"/*; do echo "== $f"; head -40 "$f"; done
	echo "sanitize: $(echo "$reports" | wc -l) sanitizer report(s) in $LOGS" >&2
	exit 1
fi
[ "$status" -eq 0 ] || { echo "sanitize: tests failed (exit $status)" >&2; exit "$status"; }
echo "sanitize: no ASan/UBSan report; library $BDIR/libfastivc.so"
