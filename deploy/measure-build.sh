#!/bin/bash
# Measures the image build: cold (--no-cache: every stage, wheels downloaded), warm (nothing changed) and
# after a code-only change (one comment added to a module in a copy of the context). Prints the seconds,
# the steps served from cache, the image size and its layers; removes the images it tagged.
#   bash deploy/measure-build.sh [--context DIR]     (root; podman set up by deploy/container-test.sh)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
context=$repo
[ "${1:-}" = --context ] && context=$(cd "$2" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-${TABSERVE_SHARED_DIR:-$repo/../shared}/container/containers.conf}
image=localhost/tabserve:measure-$$
work=$(mktemp -d /tmp/tabserve-measure.XXXXXX)
trap 'podman rmi -f "$image" >/dev/null 2>&1 || true; [ -n "${KEEP_LOGS:-}" ] || rm -rf "$work"' EXIT

build() {  # build LABEL DIR [ARGS...]
  local label=$1 dir=$2 t0 secs
  shift 2
  t0=$(date +%s.%N)
  podman build --pull=never --format docker -t "$image" "$@" "$dir" >"$work/$label.log" 2>&1 \
    || { tail -30 "$work/$label.log" >&2; exit 1; }
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '%-18s %6s s   steps from cache: %s of %s\n' "$label" "$secs" \
    "$(grep -c '^--> Using cache' "$work/$label.log" || true)" "$(grep 'STEP' "$work/$label.log" | grep -vc ': FROM ')"
}

build cold "$context" --no-cache
build warm-refill "$context"  # a --no-cache build leaves part of the layer cache unrecorded
build warm "$context"
mkdir "$work/ctx"
(cd "$context" && cp -a Dockerfile .dockerignore pyproject.toml README.md requirements src models deploy "$work/ctx/")
echo "# code-only change $(date +%s)" >>"$work/ctx/src/tabserve/__init__.py"
build code-change "$work/ctx"
podman image inspect "$image" --format '{{.Size}}' | awk '{ printf "image size: %.1f MB\n", $1 / 1e6 }'
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$image" | cut -c1-110
