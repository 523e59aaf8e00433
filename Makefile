# Moat: the two commands a newcomer needs are `make run` and `make test`.
GO      ?= go
BIN     := bin/moat
CONFIG  ?= examples/moat.yaml

.PHONY: all build run test test-short vet fmt bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/moat

# Run the gateway on its embedded defaults (SQLite, spool under ./data) on
# loopback high ports, with a demo backend (moat sink) writing to a Maildir.
run: build
	@mkdir -p data
	@echo "demo backend: moat sink on 127.0.0.1:2526 -> ./data/sink/new"
	@$(BIN) sink --listen 127.0.0.1:2526 --maildir data/sink & echo $$! > data/sink.pid
	@trap 'kill $$(cat data/sink.pid) 2>/dev/null' EXIT INT TERM; $(BIN) serve --config $(CONFIG)

# Run every test. As root, installs and starts the real peers the tests use
# (Postfix, clamd, PostgreSQL, Chromium, ...) and makes their absence fatal.
test:
	@./scripts/test.sh

test-short:
	$(GO) test -short ./...

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

bench: build
	$(BIN) bench

clean:
	rm -rf bin
