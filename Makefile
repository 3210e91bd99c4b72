# Berth: `make run` builds the OS image and boots it in QEMU; `make test` runs every test.
# Both install the Debian packages they need when missing (as root, or via sudo).

ARCH      ?= x86_64
# cloud: Debian's cloud kernel, virtio only. metal: the generic kernel with storage and NIC
# drivers for real hardware (kernel-config/modules-metal.txt), firmware; managed over the
# network (the TLS API, [api] in the config).
PROFILE   ?= cloud
# A UART as the osctl channel (`berth.osctl=<tty>`), only when asked at image build:
# `make image PROFILE=metal OSCTL_UART=ttyS1`. Off by default: on servers ttyS1 is often
# the BMC's serial-over-LAN, and a serial line carries no authentication.
OSCTL_UART ?=
ifeq ($(PROFILE),metal)
BUILD     := build/$(ARCH)-metal
KERNEL_FLAVOUR := generic
CMDLINE   := kernel-config/cmdline-$(ARCH)-metal.txt
# Firmware the metal drivers load at boot (r8169: rtl_nic/*, bnx2: bnx2/*), from Debian's
# non-free-firmware component (redistributable); only the files the modules name are used.
FIRMWARE_PKGS := firmware-realtek firmware-bnx2
else ifeq ($(PROFILE),cloud)
BUILD     := build/$(ARCH)
KERNEL_FLAVOUR := cloud
CMDLINE   := kernel-config/cmdline-$(ARCH).txt
FIRMWARE_PKGS :=
else
$(error PROFILE must be cloud or metal, not $(PROFILE))
endif
TARGET_x86_64 := x86_64-unknown-linux-gnu
TARGET_arm64  := aarch64-unknown-linux-gnu
TARGET    := $(TARGET_$(ARCH))
ifeq ($(ARCH),arm64)
# Debian's rustc-web has the arm64 std (no rustup target); a separate target dir keeps its
# artifacts apart from the rustup toolchain's.
CROSS_ENV := RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross-arm64
BIN_DIR   := target/cross-arm64/$(TARGET)/release
else
CROSS_ENV :=
BIN_DIR   := target/$(TARGET)/release
endif
BUILD_ID  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
OS_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
CONFIG    ?= examples/berth.toml
# Key pair whose public half the image trusts for OS updates (/usr/lib/berth/keys/).
# Made by `berth-image keygen` on first use; a vendor points UPDATE_KEY at its own pair.
UPDATE_KEY ?= build/keys/berth-update
# The host tool that builds and publishes images: a debug build shares its dependencies
# with the unit tier (the slow part of the image build is mkfs.erofs and veritysetup).
IMAGE_TOOL := target/debug/berth-image
CARGO     ?= cargo
FUZZ_SECONDS ?= 20

# The Debian packages the build, the VMs and the tests need, and the commands and files that
# prove each is there, are listed in scripts/deps.sh: it installs what is missing, then checks
# again by the commands themselves (one install can remove another package).


.PHONY: all deps deps-arm64 deps-test kernel bins probe image-tool image run test lint unit system-test fuzz bench clean help

all: image

help:
	@echo "make run         build the image and boot it in QEMU (serial console here)"
	@echo "make test        fmt + clippy + unit/privileged tests + whole-system tests in QEMU + fuzz smoke"
	@echo "make image       build $(BUILD)/berth.img (PROFILE=metal: build/$(ARCH)-metal/berth.img)"
	@echo "make deps        install the Debian packages the build and tests need"
	@echo "make fuzz        run every fuzz target for FUZZ_SECONDS each"
	@echo "make bench       run the benchmarks under bench/"

deps:
	scripts/deps.sh $(ARCH)

deps-arm64:
	$(MAKE) deps ARCH=arm64

# Issue 15's proof: qemu-utils removed, `make deps` must bring qemu-img back (root only:
# it changes the machine's packages; CI runs as root).
deps-test:
	@if [ "$$(id -u)" = 0 ]; then tests/deps-reinstall.sh; \
	else echo "make deps-test: SKIPPED (needs root: it removes and reinstalls qemu-utils)"; fi

# The kernel, systemd-boot and the packages the system container images are built from
# (one run makes them all: a grouped target, so make -j does not run the script twice).
SYSIMAGE_DEBS := $(BUILD)/kernel/busybox $(BUILD)/kernel/debs/openntpd/usr/sbin/ntpd
$(BUILD)/kernel/version $(BUILD)/kernel/systemd-boot.efi $(SYSIMAGE_DEBS) &:
	kernel-config/fetch-kernel.sh $(ARCH) $(BUILD)/kernel $(KERNEL_FLAVOUR)

kernel: deps $(BUILD)/kernel/version $(BUILD)/kernel/systemd-boot.efi $(SYSIMAGE_DEBS)
ifneq ($(FIRMWARE_PKGS),)
	kernel-config/fetch-firmware.sh $(BUILD)/firmware $(FIRMWARE_PKGS)
endif

# The OS binaries: static (no C library in the root image).
bins:
	$(CROSS_ENV) RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target $(TARGET) \
		-p berth-init -p berth-sysd -p berth-osctl

# One cargo invocation for both host tools (berth-image, and osctl for the host side of
# the tests): separate `-p` builds resolve dependency features differently and compile
# the shared dependencies twice.
image-tool:
	$(CARGO) build -p berth-image -p berth-osctl

$(UPDATE_KEY).pub: | image-tool
	@mkdir -p $(dir $(UPDATE_KEY))
	$(IMAGE_TOOL) keygen --out $(UPDATE_KEY)

image: deps kernel bins image-tool $(UPDATE_KEY).pub
	mkdir -p $(BUILD)
	printf '%s%s\n' "$$(cat $(CMDLINE))" "$(if $(OSCTL_UART), berth.osctl=$(OSCTL_UART))" > $(BUILD)/cmdline.txt
	$(IMAGE_TOOL) build --arch $(ARCH) --kernel $(BUILD)/kernel --bin $(BIN_DIR) \
		--out $(BUILD) --build-id $(BUILD_ID) --os-version $(OS_VERSION) \
		--modules kernel-config/modules-$(PROFILE).txt --cmdline $(BUILD)/cmdline.txt \
		--systemd-boot $(BUILD)/kernel/systemd-boot.efi $(if $(FIRMWARE_PKGS),--firmware $(BUILD)/firmware) \
		--trusted-key $(UPDATE_KEY).pub

run: image
	qemu/run.sh --arch $(ARCH) --config $(CONFIG) $(if $(filter metal,$(PROFILE)),--hw ahci) $(BUILD)/berth.img

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests and privileged host tests (CI runs as root).
# berth-image's tests build the ntpd image from the real x86_64 packages and run it.
unit:
	kernel-config/fetch-kernel.sh x86_64 build/x86_64/kernel
	BERTH_KERNEL_DIR=$(CURDIR)/build/x86_64/kernel $(CARGO) test --workspace --exclude berth-tests

# The arm64 images are boot smoke tests in `make test`: their static binaries (shared by the
# cloud and metal images) are built without optimisation (ARM64_SMOKE_OPT=0), without LTO
# and with 16 codegen units: 4 min 12 s from scratch on 2 cores instead of 15 min 38 s.
# `make image ARCH=arm64` alone builds the shipped, fully optimised ones.
ARM64_SMOKE_OPT ?= 0
ARM64_SMOKE_ENV := CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=$(ARM64_SMOKE_OPT)

SYSTEM_TEST_ENV = BERTH_IMAGE=$(CURDIR)/build/$(ARCH)/berth.img \
	BERTH_IMAGE_METAL=$(CURDIR)/build/$(ARCH)-metal/berth.img \
	BERTH_IMAGE_ARM64=$(CURDIR)/build/arm64/berth.img \
	BERTH_IMAGE_ARM64_METAL=$(CURDIR)/build/arm64-metal/berth.img \
	BERTH_OSCTL=$(CURDIR)/target/debug/osctl \
	BERTH_IMAGE_TOOL=$(CURDIR)/$(IMAGE_TOOL) BERTH_UPDATE_KEY=$(CURDIR)/$(UPDATE_KEY) \
	BERTH_KERNEL_DIR=$(CURDIR)/build/$(ARCH)/kernel BERTH_BIN_DIR=$(CURDIR)/$(BIN_DIR) \
	BERTH_PROBE=$(CURDIR)/target/$(TARGET_x86_64)/release/berth-probe

# The escape-probe binary the isolation test copies into containers (static, like the OS
# binaries, so it runs in a busybox image; it is not part of the OS image).
probe:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target $(TARGET_x86_64) -p berth-probe

# Whole-system tests: boot the real images (cloud and metal profiles, and the arm64 image,
# whose `make image ARCH=arm64` also installs the cross toolchain) in QEMU, drive them
# with osctl.
# Two VMs at a time (2 cores, one TCG vCPU each), except the OS update tests: they build
# images and time power cuts against download progress, so they run one by one.
system-test: image probe
	$(MAKE) image PROFILE=metal
	$(ARM64_SMOKE_ENV) $(MAKE) image ARCH=arm64
	$(ARM64_SMOKE_ENV) $(MAKE) image ARCH=arm64 PROFILE=metal
	$(SYSTEM_TEST_ENV) $(CARGO) test -p berth-tests -- --test-threads=2 --skip update_
	$(SYSTEM_TEST_ENV) $(CARGO) test -p berth-tests --test update -- --test-threads=1

fuzz:
	fuzz/run.sh $(FUZZ_SECONDS)

# system-test builds the arm64 image too: install its cross toolchain up front.
test: deps deps-arm64 deps-test lint unit system-test
	@if [ -x fuzz/run.sh ]; then FUZZ_BUILD=--dev fuzz/run.sh 5; fi
	@echo "make test: all tiers passed"

bench:
	@for b in bench/*/run.sh; do echo "== $$b"; $$b || exit 1; done

clean:
	rm -rf build target
