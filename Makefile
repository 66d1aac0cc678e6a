# Convenience wrapper around meson: `make demo` and `make check` do all the
# set-up on a fresh Debian 12 machine (packages, configure, build).
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
MESON_TEST_ARGS ?=

.PHONY: all deps test-deps build asan fuzz demo check unit clean

all: build

deps:
	@scripts/setup.sh

test-deps:
	@scripts/setup.sh --test

$(BUILD)/build.ninja:
	meson setup $(BUILD)

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) -Db_sanitize=address,undefined -Db_lundef=false

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

asan: deps $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)

# The libFuzzer harnesses (clang; no guests needed there).
$(FUZZ_BUILD)/build.ninja:
	CC=clang meson setup $(FUZZ_BUILD) -Dfuzzing=true -Dguest_tests=false

fuzz: test-deps $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD)

demo: build
	@scripts/demo.sh $(BUILD)

# Every test: the normal build's suites, the unit tests and the guest,
# tool and Python suites again under ASan+UBSan, then a short run of every
# fuzz harness.  The last line is the total, "N passed, N failed".
check: test-deps build asan fuzz
	@scripts/check.sh $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) $(MESON_TEST_ARGS)

unit: build
	meson test -C $(BUILD) --suite unit --print-errorlogs

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
