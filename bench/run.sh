#!/usr/bin/env bash
# The side-by-side benchmark (issue 5): `make bench` or `bash bench/run.sh [--only tabserve,floor] [--help]`.
# One-time setup (skipped when already done): wrk from Debian, MLServer 1.7.1 + mlserver-sklearn in
# bench/.venv-mlserver (uvloop<0.22 pinned), the peers' sklearn pipelines trained into bench/.work/.
# Then bench/main.py runs every section and writes bench/results/latest.{md,json} (raw wrk output in
# bench/results/raw/). Every server it starts is killed on exit, however the run ends.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MLSERVER_VENV=bench/.venv-mlserver
MLSERVER_STAMP=$MLSERVER_VENV/.installed-1.7.1
WORK=bench/.work
export BENCH_PIDFILE="$WORK/servers.pids"

if [[ ! -x $PY ]]; then
  echo "bench: $PY missing; run 'make install' first" >&2
  exit 1
fi
for arg in "$@"; do
  if [[ $arg == -h || $arg == --help ]]; then exec "$PY" -m bench.main --help; fi
done
sections=$("$PY" -m bench.main --list-sections "$@")
has() { [[ " $sections " == *" $1 "* ]]; }

mkdir -p "$WORK"
: >"$BENCH_PIDFILE"
driver=""
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  if [[ -n $driver ]] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM "$driver" 2>/dev/null || true
    wait "$driver" 2>/dev/null || true
  fi
  # last resort: the process groups of every server the driver started
  while read -r pgid; do
    [[ -n $pgid ]] && kill -KILL -- "-$pgid" 2>/dev/null || true
  done <"$BENCH_PIDFILE"
  exit "$code"
}
trap cleanup EXIT INT TERM

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk (Debian package)"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk
fi
command -v taskset >/dev/null || { echo "bench: taskset (util-linux) is required" >&2; exit 1; }

if has mlserver && [[ ! -f $MLSERVER_STAMP ]]; then
  echo "bench: creating $MLSERVER_VENV (MLServer 1.7.1, mlserver-sklearn 1.7.1, uvloop<0.22)"
  python3 -m venv "$MLSERVER_VENV"
  "$MLSERVER_VENV/bin/python" -m pip install -q --upgrade pip
  "$MLSERVER_VENV/bin/python" -m pip install -q "mlserver==1.7.1" "mlserver-sklearn==1.7.1" "uvloop<0.22"
  touch "$MLSERVER_STAMP"
fi
if [[ " $* " == *" --profile "* && ! -x bench/.venv-tools/bin/py-spy ]]; then
  echo "bench: installing py-spy into bench/.venv-tools (for --profile)"
  python3 -m venv bench/.venv-tools
  bench/.venv-tools/bin/python -m pip install -q py-spy
fi
if has typical && [[ ! -f $WORK/typical/model.joblib ]]; then
  echo "bench: training the typical baseline's pipeline"
  "$PY" -m bench.peers.train_pipeline "$WORK/typical"
fi
if has mlserver && [[ ! -f $WORK/mlserver/co2/model.joblib ]]; then
  echo "bench: training MLServer's pipeline (with its own venv's scikit-learn)"
  # bench/bodies.py reads the column mapping from tabserve's training code (pandas + numpy: both in that venv)
  PYTHONPATH=src "$MLSERVER_VENV/bin/python" -m bench.peers.train_pipeline "$WORK/mlserver/co2"
fi

echo "bench: load average $(cut -d' ' -f1-3 /proc/loadavg) (numbers are only meaningful on an idle machine)"
"$PY" -m bench.main "$@" &
driver=$!
wait "$driver"
