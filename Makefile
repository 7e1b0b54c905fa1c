# logwrap — build, test, install, benchmark.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR = $(DESTDIR)$(PREFIX)/bin
MANDIR = $(DESTDIR)$(PREFIX)/share/man/man1
# Where each shell looks for completions shipped by packages.
BASHCOMPDIR = $(DESTDIR)$(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR = $(DESTDIR)$(PREFIX)/share/zsh/site-functions
FISHCOMPDIR = $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
# The binary that writes the completion scripts (they come from its own clap
# definitions, so they always match it).
LOGWRAP ?= target/release/logwrap
CARGO ?= cargo

.PHONY: all build test check install install-completions uninstall bench clean

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
	$(MAKE) install-completions

install-completions:
	install -d $(BASHCOMPDIR) $(ZSHCOMPDIR) $(FISHCOMPDIR)
	$(LOGWRAP) completions bash > $(BASHCOMPDIR)/logwrap
	$(LOGWRAP) completions zsh > $(ZSHCOMPDIR)/_logwrap
	$(LOGWRAP) completions fish > $(FISHCOMPDIR)/logwrap.fish
	chmod 0644 $(BASHCOMPDIR)/logwrap $(ZSHCOMPDIR)/_logwrap $(FISHCOMPDIR)/logwrap.fish

uninstall:
	rm -f $(BINDIR)/logwrap $(MANDIR)/logwrap.1 $(BASHCOMPDIR)/logwrap \
		$(ZSHCOMPDIR)/_logwrap $(FISHCOMPDIR)/logwrap.fish

bench: build
	python3 bench/bench.py --bin target/release/logwrap

clean:
	$(CARGO) clean
