# The two commands of the README: `make demo` and `make test`.  Each sets up
# what it needs: Debian packages (scripts/ensure-deps.sh), a virtualenv in
# .venv, and the package with its test extras built from this tree.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := $(shell find csrc src -type f) CMakeLists.txt pyproject.toml

.PHONY: demo test deps install clean results chaos sanitize fuzz soak soak-downgrade conformance foreign-load trap-syscalls

demo: install
	$(VENV)/bin/fastivc demo

test: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -rs tests

# Long modes, outside `make test` (README, Reliability).
# chaos: 1,000 kill -9 at random moments in random states (500 over
# loopback, 500 between namespaces); per-round results in build/chaos.json;
# then a guest paused at random moments, short and long, 20 rounds.
CHAOS_ROUNDS ?= 500
GUEST_CHAOS_ROUNDS ?= 20
chaos: install
	mkdir -p build && rm -f build/chaos.json
	FIVC_CHAOS_ROUNDS=$(CHAOS_ROUNDS) FIVC_CHAOS_JSON=$(CURDIR)/build/chaos.json \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -rs -s tests/test_peer_death.py \
		-k chaos
	$(PY) scripts/chaos-summary.py build/chaos.json
	FIVC_GUEST_CHAOS_ROUNDS=$(GUEST_CHAOS_ROUNDS) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
		$(PY) -m pytest -q -rs -s tests/test_vm.py -k chaos

# soak: randomized traffic with every byte checked, SOAK_GIB per place
# (loopback and namespaces: 100 GiB in all) over SOAK_CONNS connections.
SOAK_GIB ?= 50
SOAK_CONNS ?= 64
soak: install
	FIVC_SOAK_GIB=$(SOAK_GIB) FIVC_SOAK_CONNS=$(SOAK_CONNS) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
		$(PY) -m pytest -q -rs -s tests/test_soak.py -k ring

# soak-downgrade: `fastivc downgrade --keep-accelerating` at random moments
# during bidirectional random streams (tests/test_downgrade.py), every byte
# checked: SOAK_DOWN_BYTES per run, 6 runs (the default: 10 GiB in all).
SOAK_DOWN_BYTES ?= 1789569707
soak-downgrade: install
	FASTIVC_SOAK_DOWNGRADE=$(SOAK_DOWN_BYTES) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
		$(PY) -m pytest -q -rs -s tests/test_downgrade.py -k random_moments

# conformance: the differential harness against the kernel, long mode
# (tests/test_conformance.py: CONFORM_SCENARIOS random call sequences in each
# of its two tests, 100,000 in all, plain TCP vs fastivc, every result
# compared; about 85 minutes on 2 vCPUs).
CONFORM_SCENARIOS ?= 50000
conformance: install
	FIVC_CONFORM_SCENARIOS=$(CONFORM_SCENARIOS) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
		$(PY) -m pytest -q -rs -s tests/test_conformance.py

# foreign-load: tornado's and twisted's suites at once under fastivc, next
# to two busy loops, FOREIGN_ROUNDS times, every outcome against plain TCP.
FOREIGN_ROUNDS ?= 3
foreign-load: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) scripts/foreign-load.py $(FOREIGN_ROUNDS)

# trap-syscalls: the real programs, signals, event loops, the multi-tier
# service, fork/exec/spawn and socket semantics again with Syscall User
# Dispatch armed in every process (FASTIVC_TRAP_SYSCALLS=1, `fastivc run
# --trap-syscalls`; csrc/preload/sud.c).
TRAP_TESTS ?= tests/test_real_programs.py tests/test_signals.py tests/test_eventloops.py \
	tests/test_tiers.py tests/test_families.py tests/test_calls.py tests/test_process.py \
	tests/test_peer_death.py tests/test_sockopts.py tests/test_oob.py tests/test_raw_syscalls.py
trap-syscalls: install
	FASTIVC_TRAP_SYSCALLS=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -rs $(TRAP_TESTS)

# sanitize: the library built with ASan and UBSan under the real programs.
sanitize: install
	scripts/sanitize.sh

# fuzz: both libFuzzer targets, FUZZ_SECONDS each (one CPU-hour in all).
fuzz: install
	scripts/fuzz.sh

# The README's Results section, from benchmark runs on this machine.
RESULTS := build/results
results: install
	mkdir -p $(RESULTS)
	$(VENV)/bin/fastivc bench all --repeats 5 --quiet --json $(RESULTS)/all.json
	$(VENV)/bin/fastivc bench connect --loopback --repeats 5 --quiet --json $(RESULTS)/connect-lo.json
	$(VENV)/bin/fastivc bench ring --repeats 5 --quiet --json $(RESULTS)/ring.json
	$(VENV)/bin/fastivc bench redis --repeats 5 --quiet --json $(RESULTS)/redis.json
	$(VENV)/bin/fastivc bench nginx --repeats 5 --quiet --json $(RESULTS)/nginx1.json
	$(VENV)/bin/fastivc bench nginx --workers 2 --repeats 5 --quiet --json $(RESULTS)/nginx2.json
	$(VENV)/bin/fastivc bench redis --clients 50 1000 4000 --repeats 5 --quiet \
		--json $(RESULTS)/redis-scale.json
	$(VENV)/bin/fastivc bench nginx --connections 10 1000 10000 --seconds 3 --repeats 5 --quiet \
		--json $(RESULTS)/nginx-scale.json
	$(VENV)/bin/fastivc bench scale --idle 0 1000 10000 --repeats 5 --quiet \
		--json $(RESULTS)/scale.json
	$(PY) scripts/readme-results.py $(RESULTS)/all.json $(RESULTS)/connect-lo.json $(RESULTS)/ring.json \
		$(RESULTS)/redis.json $(RESULTS)/nginx1.json $(RESULTS)/nginx2.json \
		$(RESULTS)/redis-scale.json $(RESULTS)/nginx-scale.json $(RESULTS)/scale.json

install: $(VENV)/.installed

deps:
	scripts/ensure-deps.sh

$(PY): | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(PY) $(SOURCES) | deps
	$(PY) -m pip install -q '.[test]'
	touch $@

clean:
	rm -rf build $(VENV) .pytest_cache
