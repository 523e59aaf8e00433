#!/usr/bin/env bash
# The test command (make test). Installs/starts the real peers, then runs
# gofmt, go vet and the whole suite with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

env_lines=$(./scripts/test-deps.sh)
while IFS= read -r line; do
	[ -n "$line" ] && export "$line"
done <<<"$env_lines"
if [ "$(id -u)" = 0 ]; then
	export MOAT_REQUIRE_TOOLS=1
fi
export MOAT_ARTIFACTS="${MOAT_ARTIFACTS:-$PWD/test-artifacts}"
mkdir -p "$MOAT_ARTIFACTS"

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './vendor/*'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...
go test -race -timeout 45m -p 2 "$@" ./...
