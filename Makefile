# A thin front to CMake. `make run` and `make test` work on a fresh Debian 12 machine:
# they install what is missing first (deploy/local/install-deps.sh).
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS ?= $(shell nproc)

.PHONY: all deps build build-asan run test bench lint format fuzz clean

all: build

deps:
	@bash deploy/local/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS) -- --no-print-directory -s

build-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DGW_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS) -- --no-print-directory -s

run: build
	@bash deploy/local/run.sh

# The normal build runs the unit tests and the end-to-end test; the ASan+UBSan build
# runs everything (unit, integration, fault tests), two at a time: the integration
# tests mostly wait on processes, and each uses its own ports, cluster and broker.
# Between the two, a short libFuzzer run of every target. The ASan ctest summary is
# the closing line CI reads.
CTEST_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

test: build build-asan
	@cd $(BUILD) && ctest --output-on-failure --timeout 300 -R '^unit\.|^integration\.e2e$$'
	@if [ -f tests/fuzz.sh ]; then FUZZ_SECONDS=$${FUZZ_SECONDS:-10} bash tests/fuzz.sh; fi
	@cd $(ASAN_BUILD) && $(CTEST_ENV) ctest --output-on-failure --timeout 600 -j2

# The gateway beside the endpoint alone, then the auditor's write path beside psql's own
# COPY of the same rows, then authz decisions per second on one core. The longer ones
# (dispatcher, backup, audit queries over 10 M rows) are in tests/bench/ with their docs.
bench: build
	@bash tests/bench/bench.sh $(BUILD)
	@bash tests/bench/auditor.sh $(BUILD) $${BENCH_AUDIT_EVENTS:-200000}
	@bash tests/bench/authz.sh $(BUILD)

fuzz: deps
	@FUZZ_SECONDS=$${FUZZ_SECONDS:-600} bash tests/fuzz.sh

lint:
	@bash tests/lint.sh
	@bash deploy/check.sh

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
