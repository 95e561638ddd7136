#!/usr/bin/env bash
# `make ui`: a local Prefect server and UI with every Distillery deployment (prefect.yaml) and a
# process worker to run them. Ctrl-C stops the worker and the server.
#   PREFECT_HOME   server database and logs (default: .prefect in the repo; `make` sets the same)
#   DISTILLERY_UI_PORT   port on 127.0.0.1 (default 4200)
set -euo pipefail
set -m  # each background job gets its own process group: Ctrl-C reaches only this script, which stops them

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PREFECT="$ROOT/.venv/bin/prefect"
PY="$ROOT/.venv/bin/python"
HOST=127.0.0.1
PORT="${DISTILLERY_UI_PORT:-4200}"
URL="http://$HOST:$PORT"

export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
mkdir -p "$PREFECT_HOME"
SERVER_LOG="$PREFECT_HOME/server.log"

[[ -x "$PREFECT" ]] || { echo "ui.sh: $PREFECT not found; run 'make install' first" >&2; exit 1; }

healthy() {
    "$PY" -c "import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen('$URL/api/health', timeout=3).status == 200 else 1)
except Exception:
    sys.exit(1)"
}

descendants() {  # every process below $1 (flow runs get their own process groups)
    command -v pgrep >/dev/null || return 0
    local child
    for child in $(pgrep -P "$1" || true); do
        echo "$child"
        descendants "$child"
    done
}

SERVER_PID="" WORKER_PID=""
stop() {  # stop $1 (a job started here): its process group and every descendant
    local pid="$1" procs
    [[ -n "$pid" ]] || return 0
    procs="$(descendants "$pid")"
    kill -TERM -- "-$pid" 2>/dev/null || true
    [[ -z "$procs" ]] || kill -TERM $procs 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    [[ -z "$procs" ]] || kill -KILL $procs 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    trap - EXIT INT TERM
    echo
    if [[ -n "$WORKER_PID" ]]; then echo "stopping the worker"; stop "$WORKER_PID"; fi
    if [[ -n "$SERVER_PID" ]]; then echo "stopping the server"; stop "$SERVER_PID"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if healthy; then
    echo "a Prefect server already answers at $URL: using it (it keeps running after Ctrl-C)"
else
    echo "starting the Prefect server at $URL (log: $SERVER_LOG)"
    # The UI's pages call the API at the URL the server hands them, 4200 unless told otherwise.
    PREFECT_SERVER_UI_API_URL="$URL/api" PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false \
        "$PREFECT" server start --host "$HOST" --port "$PORT" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    for i in $(seq 1 180); do
        healthy && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null || [[ $i -eq 180 ]]; then
            echo "ui.sh: the Prefect server did not come up; last lines of $SERVER_LOG:" >&2
            tail -n 30 "$SERVER_LOG" >&2
            exit 1
        fi
        sleep 1
    done
fi
export PREFECT_API_URL="$URL/api"

"$PREFECT" work-pool inspect distillery >/dev/null 2>&1 \
    || "$PREFECT" work-pool create distillery --type process
# Without DISTILLERY_ROOT: prefect.yaml's pull step must read it on the worker, not freeze it here.
env -u DISTILLERY_ROOT "$PREFECT" --no-prompt deploy --all

DISTILLERY_ROOT="$ROOT" "$PREFECT" worker start --pool distillery --type process &
WORKER_PID=$!

echo
echo "open $URL and run the 'pipeline' deployment  (Ctrl-C stops the worker and the server)"
echo
wait "$WORKER_PID"
