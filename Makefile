# A thin front to CMake. `make run` and `make test` work on a fresh Debian 12 machine:
# they install what is missing first (deploy/local/install-deps.sh).
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS ?= $(shell nproc)

.PHONY: all deps build build-asan run test test-unit bench lint format fuzz clean

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

# Unit and integration tests against the normal build, then the same suite against the
# ASan+UBSan build. ctest's summary is the closing line.
test: build build-asan
	@cd $(BUILD) && ctest --output-on-failure --timeout 300
	@cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure --timeout 600

bench: build
	@bash tests/bench/bench.sh $(BUILD)

lint:
	@bash tests/lint.sh

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
