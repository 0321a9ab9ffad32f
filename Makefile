# ext4iomap: build, test, install.
#   make            release build of fuservicemount and ext4iomapd
#   make test       install test dependencies, then run every test (needs root)
#   make demo       install dependencies, build, mount a demo image through the helper
#   make install    PREFIX=/usr/local DESTDIR= (mount helpers go where mount(8) looks)
#   make uninstall

SHELL := /bin/bash
PATH := $(PATH):/opt/swift/usr/bin
export PATH

PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec/ext4iomap
# mount(8) searches /sbin (merged into /usr/sbin on Debian) for mount.<type> helpers.
HELPERDIR  ?= /usr/sbin
UNITDIR    ?= $(PREFIX)/lib/systemd/system
MANDIR     ?= $(PREFIX)/share/man

SWIFT      ?= swift
CONFIG     ?= release
BUILDDIR    = .build/$(CONFIG)

.PHONY: all build test demo install uninstall setup clean

all: build

build:
	$(SWIFT) build -c $(CONFIG) --product fuservicemount
	$(SWIFT) build -c $(CONFIG) --product ext4iomapd

setup:
	bash scripts/setup.sh

test: setup
	bash tests/run-all.sh

demo: setup build
	bash scripts/demo.sh $(BUILDDIR)

# SKIP_BUILD=1 installs already-built binaries from BUILDDIR (the tests stage
# the debug build this way: make install SKIP_BUILD=1 BUILDDIR=.build/debug DESTDIR=...).
install: $(if $(SKIP_BUILD),,build)
	test -x $(BUILDDIR)/fuservicemount -a -x $(BUILDDIR)/ext4iomapd
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(HELPERDIR) \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(BUILDDIR)/fuservicemount $(DESTDIR)$(BINDIR)/fuservicemount
	install -m 0755 $(BUILDDIR)/ext4iomapd $(DESTDIR)$(LIBEXECDIR)/ext4iomapd
	for t in ext4 ext3 ext2; do \
	  ln -sf $(BINDIR)/fuservicemount $(DESTDIR)$(HELPERDIR)/mount.fuse.$$t; done
	install -m 0644 units/ext4iomap.socket $(DESTDIR)$(UNITDIR)/ext4iomap.socket
	sed 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' units/ext4iomap@.service > $(DESTDIR)$(UNITDIR)/ext4iomap@.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ext4iomap@.service
	install -m 0644 man/fuservicemount.8 man/ext4iomapd.8 $(DESTDIR)$(MANDIR)/man8/
	for t in ext4 ext3 ext2; do \
	  ln -sf fuservicemount.8 $(DESTDIR)$(MANDIR)/man8/mount.fuse.$$t.8; done

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/fuservicemount $(DESTDIR)$(LIBEXECDIR)/ext4iomapd \
	  $(DESTDIR)$(UNITDIR)/ext4iomap.socket $(DESTDIR)$(UNITDIR)/ext4iomap@.service \
	  $(DESTDIR)$(MANDIR)/man8/fuservicemount.8 $(DESTDIR)$(MANDIR)/man8/ext4iomapd.8
	for t in ext4 ext3 ext2; do \
	  rm -f $(DESTDIR)$(HELPERDIR)/mount.fuse.$$t $(DESTDIR)$(MANDIR)/man8/mount.fuse.$$t.8; done
	-rmdir $(DESTDIR)$(LIBEXECDIR)

clean:
	rm -rf .build
