# dtmux — see README.md. Everything here runs offline but `make tools`,
# which fetches the pinned code generators through the Go module proxy.

SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(PATH)

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/dtmux/dtmux/internal/version.Version=$(VERSION)

# `make test` stays well under 10 minutes on 2 cores.
TEST_TIMEOUT ?= 9m
FUZZTIME     ?= 10s

.PHONY: all tools generate check-generated lint breaking build test fuzz bench demo clean

all: build

tools: ## install buf and the protoc plugins into .tools/bin
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

generate: ## regenerate the Go code beside the protos
	buf format -w
	buf generate

check-generated: generate ## fail when the committed generated code is stale
	@git diff --exit-code -- proto || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }

lint: ## buf lint (STANDARD), buf format, gofmt, go vet
	buf lint
	buf format -d --exit-code
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

breaking: ## buf breaking against main
	buf breaking --against '.git#branch=main'

build: ## the three binaries, plus cross-built agents for bootstrap, into bin/
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./agent/cmd/dtmux-agent ./controller/cmd/dtmux-controller ./cli/cmd/dtmux
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/dtmux-agent-linux-amd64 ./agent/cmd/dtmux-agent
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/dtmux-agent-linux-arm64 ./agent/cmd/dtmux-agent

test: ## unit and end-to-end tests with the race detector
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

# Go 1.26's fuzz coordinator can fail a target with a bare "context
# deadline exceeded" as -fuzztime ends (go.dev/issue/75804, fixed in Go
# 1.27): such a run, with no failing input written, is run once more; any
# other failure fails.
fuzz: ## a short run of every fuzz target
	@set -e; log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    for try in 1 2; do \
	      echo "fuzz $$pkg $$f"; \
	      if $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg >$$log 2>&1; then cat $$log; break; fi; \
	      cat $$log; \
	      if [ $$try = 1 ] && grep -q 'context deadline exceeded' $$log && ! grep -q 'Failing input written' $$log; then \
	        echo "fuzz: $$f hit the coordinator's deadline race (go.dev/issue/75804); once more"; continue; fi; \
	      exit 1; \
	    done; \
	  done; \
	done

bench: build ## benchmarks; never part of `make test`
	DTMUX_BIN=$(BIN) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/...

demo: build ## a controller on the local provider in a temp state dir, two workspaces, a tour
	@./cli/demo.sh $(BIN)

clean:
	rm -rf $(BIN)
