#!/usr/bin/env bash
# make test: start or find the backends, then vet and race-test everything,
# integration and end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
trap deps_stop EXIT
unformatted=$(gofmt -l cmd internal bench 2>/dev/null || true)
if [ -n "$unformatted" ]; then echo "gofmt needed on: $unformatted" >&2; exit 1; fi
go vet ./...
go test -race -count=1 -timeout 12m ./... "$@"
