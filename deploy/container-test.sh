#!/bin/bash
# Container test (`make container-test`, CI): build the image with podman, run it locked down, predict,
# stop it with SIGTERM, and check the prediction log was flushed. Also: hadolint, promtool on the alert
# rules, and a corrupted-model start that must fail fast. Cleans up the containers and the test image it
# made (the base images and podman's layer cache stay, so the next run is warm).
#
#   bash deploy/container-test.sh [--context DIR] [--keep-image] [--prune-cache]
#
# --prune-cache also removes the build-stage layers this project's builds left (label io.tabserve.build-stage);
# by default they stay as podman's layer cache, which is what makes the next run warm (~20 s instead of ~90 s).
#
# Environment: TABSERVE_SHARED_DIR (default ../shared beside the repo), CONTAINERS_CONF (default its
# container/containers.conf), PYTHON (default .venv/bin/python), CONTAINER_TEST_MODELS ("co2 penguins").
# Needs root (rootful podman; ../shared/container/README.md). Prints the build time, image size and layers,
# cold start (run -> /ready 200) and stop time: docs/deployment.md quotes them.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
context=$repo
keep_image=0
prune_cache=0
while [ $# -gt 0 ]; do
  case $1 in
    --context) context=$(cd "$2" && pwd); shift 2 ;;
    --keep-image) keep_image=1; shift ;;
    --prune-cache) prune_cache=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "container-test: unknown argument $1" >&2; exit 2 ;;
  esac
done

shared=${TABSERVE_SHARED_DIR:-$repo/../shared}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$shared/container/containers.conf}
py=${PYTHON:-$repo/.venv/bin/python}
bin=$(dirname "$py")
models=${CONTAINER_TEST_MODELS:-co2 penguins}
image=localhost/tabserve:ctest-$$
name=tabserve-ctest-$$
bad=tabserve-ctest-bad-$$
work=$(mktemp -d /tmp/tabserve-ctest.XXXXXX)
failed=0

log() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
fail() { echo "container-test: FAIL: $*" >&2; failed=1; }
cleanup() {
  podman rm -f -t 0 "$name" "$bad" >/dev/null 2>&1 || true
  if [ "$keep_image" = 0 ]; then podman rmi -f "$image" >/dev/null 2>&1 || true; fi
  if [ "$prune_cache" = 1 ]; then
    podman image prune -f --filter label=io.tabserve.build-stage >/dev/null 2>&1 || true
    podman image prune -f --filter label=org.opencontainers.image.title=tabserve >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- tools: podman + the local base images (README of ../shared/container), promtool, hadolint
log "base images"
[ -f "$CONTAINERS_CONF" ] || { echo "container-test: no $CONTAINERS_CONF (set TABSERVE_SHARED_DIR)" >&2; exit 2; }
bash "$shared/container/build-images.sh" >"$work/base.log" 2>&1 || { cat "$work/base.log" >&2; exit 1; }
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'debian-base|python' || true

if ! command -v promtool >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing Debian's prometheus package for promtool"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
    >"$work/apt.log" 2>&1 || echo "container-test: could not install prometheus (promtool check skipped)" >&2
fi
if command -v promtool >/dev/null; then
  log "promtool check rules"
  promtool check rules "$repo/deploy/monitoring/alerts.yaml" || fail "promtool check rules"
  promtool test rules "$repo/deploy/monitoring/alerts_test.yaml" || fail "promtool test rules"
fi
log "hadolint"
"$bin/hadolint" "$repo/Dockerfile" && echo "hadolint: clean" || fail "hadolint Dockerfile"

# ---- build
log "build ($context)"
t0=$(now)
if ! podman build --pull=never --format docker -t "$image" "$context" >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  echo "container-test: FAIL: podman build" >&2
  exit 1
fi
echo "build: $(since "$t0") s"
grep -E '^(ok |image-check:)' "$work/build.log" || true
podman image inspect "$image" --format 'image size: {{.Size}} bytes' | awk '{printf "%s %s %.1f MB\n", $1, $2, $3/1e6}'
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$image" | cut -c1-110

# ---- expected answers, computed now from the committed models (never stale constants)
log "expected answers (tabserve predict, offline)"
for m in $models; do
  [ -d "$context/models/$m" ] || { fail "no model $m under $context/models"; continue; }
  "$bin/tabserve" predict "$m" --models "$context/models" --input "$repo/deploy/smoke/$m.json" >"$work/$m.expected.json" \
    || fail "tabserve predict $m"
done

# ---- run locked down: read-only root, tmpfs /tmp, no capabilities, no privilege escalation, non-root
log "run --read-only --tmpfs /tmp --cap-drop=ALL --security-opt no-new-privileges"
mkdir -p "$work/data" && chown 10001:10001 "$work/data"
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
start=$(now)
podman run -d --name "$name" --read-only --tmpfs /tmp:rw,size=64m,mode=1777 --cap-drop=ALL \
  --security-opt no-new-privileges --no-healthcheck -p "127.0.0.1:$port:8080" -e PORT=8080 \
  -v "$work/data:/data" -e TABSERVE_DATA_DIR=/data "$image" >/dev/null
if cold=$("$py" "$repo/deploy/container_check.py" wait-ready "$url" --timeout 90 --since "$start"); then
  echo "cold start (podman run -> /ready 200): ${cold} s"
else
  podman logs "$name" 2>&1 | tail -30 >&2
  echo "container-test: FAIL: never ready" >&2
  exit 1
fi
uid=$(podman exec "$name" id -u)
echo "id -u: $uid"
[ "$uid" != 0 ] || fail "the container runs as root"
podman exec "$name" sh -c 'touch /app/models/x 2>/dev/null || touch /opt/x 2>/dev/null' && fail "root filesystem writable"
# HEALTHCHECK timers need systemd (absent here): run the image's own HEALTHCHECK command by hand
hc=$(podman image inspect "$image" --format '{{json .Config.Healthcheck.Test}}')
mapfile -t hc_cmd < <("$py" -c 'import json, sys; t = json.loads(sys.argv[1]); print("\n".join(t[1:] if t[0] == "CMD" else ["sh", "-c", t[1]]))' "$hc")
podman exec "$name" "${hc_cmd[@]}" && echo "HEALTHCHECK ${hc_cmd[*]:0:2} ...: healthy" || fail "HEALTHCHECK failed"

log "predictions vs the offline answers"
sent=0
for m in $models; do
  [ -s "$work/$m.expected.json" ] || continue
  "$py" "$repo/deploy/container_check.py" compare "$url" "$m" "$repo/deploy/smoke/$m.json" "$work/$m.expected.json" \
    || fail "prediction $m"
  sent=$((sent + 1))
done

podman stats --no-stream --format 'memory after the predictions: {{.MemUsage}}' "$name" 2>/dev/null || true

# ---- SIGTERM: exit 0 within 10 s, prediction log flushed
log "podman stop -t 10 (SIGTERM)"
s0=$(now)
podman stop -t 10 "$name" >/dev/null
stop_s=$(since "$s0")
code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
echo "stopped in $stop_s s, exit code $code"
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
awk -v s="$stop_s" 'BEGIN { exit !(s < 10) }' || fail "stop took ${stop_s}s (SIGKILL at 10 s)"
rows=$("$py" "$repo/deploy/container_check.py" count-rows "$work/data/predictions.sqlite") || rows=0
echo "prediction log rows after stop: $rows (sent $sent)"
[ "$rows" -ge "$sent" ] && [ "$sent" -gt 0 ] || fail "prediction log not flushed ($rows rows for $sent predictions)"
podman logs "$name" 2>&1 | tail -3

# ---- a corrupted model file: start-up must fail fast with one line naming the file
log "corrupted model: fail fast"
first=$(echo "$models" | awk '{print $1}')
cp -r "$context/models" "$work/badmodels"
onnx=$(find "$work/badmodels/$first" -name model.onnx | sort | tail -1)
printf 'X' | dd of="$onnx" bs=1 seek=100 conv=notrunc status=none
chmod -R a+rX "$work/badmodels"
b0=$(now)
set +e
podman run --name "$bad" --read-only --tmpfs /tmp:rw,size=16m,mode=1777 --cap-drop=ALL --no-healthcheck \
  --security-opt no-new-privileges -v "$work/badmodels:/app/models:ro" "$image" >"$work/bad.out" 2>&1
bad_code=$?
set -e
echo "exit code $bad_code after $(since "$b0") s: $(tail -1 "$work/bad.out")"
[ "$bad_code" != 0 ] || fail "started with a corrupted model"
grep -q 'sha256 mismatch' "$work/bad.out" || fail "no sha256 message for the corrupted model"

if [ "$failed" != 0 ]; then
  echo "container-test: FAILED" >&2
  exit 1
fi
echo
echo "container-test: all checks passed"
