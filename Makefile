# Installs sprout's binaries where containerd and the CLI find them:
# sprout, sprout-init (the runtime's init helper, next to its callers),
# sproutd and containerd-shim-sprout-v2 (found by containerd on its PATH).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
BINARIES := sprout sprout-init sproutd containerd-shim-sprout-v2

.PHONY: build install uninstall

build:
	cargo build --release -p sprout -p sprout-shim --bins

install: build
	install -d $(DESTDIR)$(BINDIR)
	for b in $(BINARIES); do install -m 0755 target/x86_64-unknown-linux-gnu/release/$$b $(DESTDIR)$(BINDIR)/$$b; done

uninstall:
	for b in $(BINARIES); do rm -f $(DESTDIR)$(BINDIR)/$$b; done
