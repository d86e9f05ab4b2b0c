#!/usr/bin/env bash
# Runs the whole peer suite on a Debian machine and regenerates the report:
#   bench/results/*.json, the "Peer suite" section of docs/benchmarks.md, bench/results/commits-vs-writers.png
#
#   bench/run.sh                         full run (3 rounds, 100k vectors, 1 GB of log; about 20 minutes)
#   ENGRAM_BENCH_QUICK=1 bench/run.sh    smoke run (1 round of short points, 20k vectors, 100 MB of log; about 2 minutes)
#
# Other variables: ENGRAM_BENCH_ROUNDS (commit rounds), ENGRAM_BENCH_DIR (scratch directory; must be on
# the disk being measured, not tmpfs; default bench/scratch), ENGRAM_BENCH_RECOVERY_MB (log size for the
# recovery workload), ENGRAM_BENCH_VECTOR_ROWS, ENGRAM_BENCH_SKIP_INSTALL=1 (no apt-get/pip),
# ENGRAM_BENCH_PG_PORT (default 55432).
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
QUICK="${ENGRAM_BENCH_QUICK:-}"
[[ "$QUICK" == "0" ]] && QUICK=""
if [[ -n "$QUICK" ]]; then ROUNDS="${ENGRAM_BENCH_ROUNDS:-1}"; ROWS="${ENGRAM_BENCH_VECTOR_ROWS:-20000}";
else ROUNDS="${ENGRAM_BENCH_ROUNDS:-3}"; ROWS="${ENGRAM_BENCH_VECTOR_ROWS:-100000}"; fi
SCRATCH="${ENGRAM_BENCH_DIR:-$BENCH/scratch}"
RESULTS="$BENCH/results"
PG_PORT="${ENGRAM_BENCH_PG_PORT:-55432}"
say() { echo "== $*" >&2; }

# --- 1. What the suite needs ---------------------------------------------------------------------
if [[ -z "${ENGRAM_BENCH_SKIP_INSTALL:-}" ]]; then
  if [[ "$(id -u)" == 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  say "installing Debian packages"
  $SUDO apt-get update -qq
  # librocksdb-dev: the rocksdb crate links it dynamically (no 22-minute source build);
  # libclang-dev: the crate's bindings are generated at build time.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    build-essential pkg-config clang libclang-dev librocksdb-dev libsqlite3-dev sqlite3 \
    postgresql python3 python3-venv python3-dev >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq linux-perf >/dev/null 2>&1 || say "linux-perf not installed (optional, for profiles)"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: this suite needs Rust >= 1.89 (https://rustup.rs); Debian's cargo is too old" >&2
  exit 1
fi
VENV="$BENCH/.venv"
if [[ -z "${ENGRAM_BENCH_SKIP_INSTALL:-}" || ! -x "$VENV/bin/python" ]]; then
  say "python venv with the Python peers ($VENV)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$BENCH/requirements.txt"
fi
PY="$VENV/bin/python"

say "building bench/peers (release)"
( cd "$BENCH/peers" && ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu cargo build --release --locked -q )
PEERS="$BENCH/peers/target/release/peers"
# grep reads all of ldd's output (not -q): with pipefail, ldd killed by SIGPIPE would fail the test.
if ! ldd "$PEERS" | grep 'librocksdb\.so' >/dev/null; then
  echo "bench/peers is not linked to Debian's shared librocksdb; refusing to measure a different RocksDB" >&2
  exit 1
fi

mkdir -p "$SCRATCH" "$RESULTS"
rm -f "$RESULTS"/*.json

# --- 2. A private PostgreSQL cluster on loopback --------------------------------------------------
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
PG_DIR="$(mktemp -d "$SCRATCH/pg.XXXXXX")"
PG_USER=""
if [[ "$(id -u)" == 0 ]]; then PG_USER="postgres"; chown "$PG_USER" "$PG_DIR"; fi
as_pg() { if [[ -n "$PG_USER" ]]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi; }
stop_pg() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$PG_DIR"; }
trap stop_pg EXIT
say "starting PostgreSQL ($PG_BIN) on 127.0.0.1:$PG_PORT in $PG_DIR"
as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w start -o \
  "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_DIR -c fsync=on -c synchronous_commit=on -c wal_sync_method=fdatasync -c full_page_writes=on -c commit_delay=0 -c shared_buffers=256MB -c max_connections=200" >/dev/null
export ENGRAM_BENCH_PG="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
export ENGRAM_BENCH_DIR="$SCRATCH"
[[ -n "$QUICK" ]] && export ENGRAM_BENCH_QUICK=1

# --- 3. The workloads -----------------------------------------------------------------------------
echo "{\"uptime_before\": \"$(uptime)\"," > "$RESULTS/load.json"
for round in $(seq 1 "$ROUNDS"); do
  say "workload 1, round $round/$ROUNDS: durable one-memory transactions"
  "$PEERS" commit --round "$round" --out "$RESULTS/commit-round-$round.json"
  "$PY" "$BENCH/chroma_commit.py" --round "$round" --scratch "$SCRATCH" --out "$RESULTS/chroma-round-$round.json" ${QUICK:+--quick}
done
say "workload 3: vector search, Engram and its peers ($ROWS x 384)"
"$PY" "$BENCH/vectors.py" --rows "$ROWS" --scratch "$SCRATCH" --engram "$PEERS" --out "$RESULTS/vectors.json"
say "workload 2: recovery"
"$PEERS" recovery --out "$RESULTS/recovery.json"
say "workload 4: reads while writing"
"$PEERS" reads --out "$RESULTS/reads.json"
say "workload 5: durable inserts over HTTP (64 keep-alive clients) against the embedded engine"
( cd "$ROOT" && ENGRAM_BENCH_JSON="$RESULTS/server.json" cargo bench -q --locked -p engram-server --bench http_insert )
echo " \"uptime_after\": \"$(uptime)\"}" >> "$RESULTS/load.json"

# --- 4. The report --------------------------------------------------------------------------------
say "writing docs/benchmarks.md (peer suite section) and the plot"
"$PY" "$BENCH/report.py" --results "$RESULTS" --scratch "$SCRATCH" --doc "$ROOT/docs/benchmarks.md" ${QUICK:+--quick}
say "done: $RESULTS"
