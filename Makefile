# logwrap — build, test, install, benchmark.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR = $(DESTDIR)$(PREFIX)/bin
MANDIR = $(DESTDIR)$(PREFIX)/share/man/man1
CARGO ?= cargo

.PHONY: all build test check install uninstall bench clean

all: build

build:
	$(CARGO) build --release --locked

# The whole suite: unit tests beside the code, then the integration tests that
# drive the real binary.
test:
	$(CARGO) test --locked --all-targets
	$(CARGO) test --locked --doc

check:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps
	$(MAKE) test

install: build
	install -d $(BINDIR) $(MANDIR)
	install -m 0755 target/release/logwrap $(BINDIR)/logwrap
	install -m 0644 man/logwrap.1 $(MANDIR)/logwrap.1

uninstall:
	rm -f $(BINDIR)/logwrap $(MANDIR)/logwrap.1

bench: build
	python3 bench/bench.py --bin target/release/logwrap

clean:
	$(CARGO) clean
