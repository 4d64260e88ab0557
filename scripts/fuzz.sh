#!/bin/sh
# make fuzz: the long fuzzing run of README "Reliability": both libFuzzer
# targets (fuzz_fabric: what the library reads, in memory; fuzz_peer: a
# hostile peer process on a real fabric file), FUZZ_SECONDS each (default
# 1,800: one CPU-hour in all), one after the other, corpora kept in
# build/fuzz-corpus-*.  A crash or a hang (-timeout) fails the run and
# leaves its input in build/fuzz-artifacts.
set -eu
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-1800}
CC=clang cmake -S . -B build/fuzz -G Ninja -DFASTIVC_TESTS=ON -DFASTIVC_LIBFUZZER=ON >/dev/null
cmake --build build/fuzz --target fuzz_fabric_libfuzzer fuzz_peer_libfuzzer >/dev/null
mkdir -p build/fuzz-artifacts
for t in fuzz_fabric fuzz_peer; do
	mkdir -p "build/fuzz-corpus-$t"
	echo "fuzz: $t for $SECONDS_EACH s"
	ASAN_OPTIONS=detect_leaks=0 "build/fuzz/tests/c/${t}_libfuzzer" "build/fuzz-corpus-$t" \
		-max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix=build/fuzz-artifacts/ \
		2>"build/fuzz-$t.log" || { tail -40 "build/fuzz-$t.log"; exit 1; }
	grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "build/fuzz-$t.log" || true
done
echo "fuzz: no crash, no hang"
