# shellcheck shell=bash
# Shared helpers for the Tidegate load-test scripts (bench-passthrough, bench-idle, bench-batch, ...).
# Source it; it does not run anything by itself.
#
# Everything the benchmarks start is written under .lab/bench/ and stopped by
# `bench_cleanup` (install it with `trap bench_cleanup EXIT`).

LOADTEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$LOADTEST_DIR/.." && pwd)
BENCH_DIR="$ROOT/.lab/bench"

PG_HOST=127.0.0.1
PG_PORT=${PG_PORT:-15432}
PGB_PORT=${PGB_PORT:-16441}
TG_PORT=${TG_PORT:-16440}
TG_HTTP_PORT=${TG_HTTP_PORT:-19188}
BENCH_USER=tidegate
BENCH_DB=bench

export PGPASSWORD=tidegate
# Same transport for every target: plaintext over loopback (Tidegate and this PgBouncer
# answer SSLRequest with 'N'; the lab primary might not).
export PGSSLMODE=disable
export PGCONNECT_TIMEOUT=10

PGB_DIR="$BENCH_DIR/pgbouncer"
PGB_INI="$PGB_DIR/pgbouncer.ini"
PGB_PIDFILE="$PGB_DIR/pgbouncer.pid"
PGB_LOG="$PGB_DIR/pgbouncer.log"
TG_CONFIG="$BENCH_DIR/tidegate.yaml"
TG_LOG="$BENCH_DIR/tidegate.log"
TG_PIDFILE="$BENCH_DIR/tidegate.pid"

PGB_STATUS=""   # "ok" or a reason it is not available
TG_STATUS=""    # "ok", "not built", "failed to build", "failed to start", ...
TG_DETAIL=""    # log tail / explanation when TG_STATUS != ok
TG_PID=""
PGB_STARTED=0
TG_STARTED=0

# The command line as typed, for the report (arguments quoted only when needed).
# shellcheck disable=SC2089,SC2090
shown_cmdline() {
    local out=$1 a; shift
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=,+-]+$ ]]; then out+=" $a"; else out+=" '${a//\'/\'\\\'\'}'"; fi
    done
    printf '%s' "$out"
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# psql as the superuser (trust on loopback) against the primary.
psql_su() { psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres "$@"; }
# psql as the benchmark user against an arbitrary port.
psql_bench() { local port=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$BENCH_USER" -d "$BENCH_DB" "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

raise_nofile() {
    local hard
    hard=$(ulimit -Hn)
    ulimit -Sn "$hard" 2>/dev/null || true
}

# Make sure the lab primary is reachable; run `scripts/lab up` (idempotent) when it is not.
ensure_lab() {
    if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 \
        && psql_su -d "$BENCH_DB" -tAc 'select 1' >/dev/null 2>&1; then
        return 0
    fi
    [[ -x "$ROOT/scripts/lab" ]] || die "PostgreSQL is not reachable on $PG_HOST:$PG_PORT and scripts/lab does not exist yet"
    log "primary not reachable; running scripts/lab up"
    "$ROOT/scripts/lab" up >&2 || die "scripts/lab up failed"
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 30 || die "primary still not reachable on $PG_PORT after scripts/lab up"
}

# pgbench tables at scale 10 in `bench`, created directly on the primary as tidegate.
ensure_pgbench_tables() {
    local scale=${1:-10} have
    have=$(psql_bench "$PG_PORT" -tAc "select count(*) from pgbench_branches" 2>/dev/null || true)
    if [[ "$have" == "$scale" ]] \
        && [[ $(psql_bench "$PG_PORT" -tAc "select count(*) from pgbench_accounts" 2>/dev/null) == "$((scale * 100000))" ]]; then
        log "pgbench tables present at scale $scale"
        return 0
    fi
    log "initializing pgbench tables (scale $scale; found branches=${have:-none})"
    pgbench -i -s "$scale" --quiet -h "$PG_HOST" -p "$PG_PORT" -U "$BENCH_USER" "$BENCH_DB" >&2 \
        || die "pgbench -i failed"
}

server_version() { psql_su -d postgres -tAc 'show server_version' 2>/dev/null | awk '{print $1}'; }
pgbouncer_version() { pgbouncer --version 2>/dev/null | head -1 | awk '{print $2}'; }

machine_line() {
    local mem cpu
    mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
    cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
    printf '%s cores (%s), %s RAM, %s; PostgreSQL %s, PgBouncer %s, %s' \
        "$(nproc)" "${cpu:-unknown CPU}" "$mem" "$(uname -sr)" "$(server_version)" "$(pgbouncer_version)" \
        "$(pgbench --version | awk '{print $1, $3}')"
}

tidegate_revision() {
    local rev
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo "(no commit yet)"; return; }
    if [[ -n $(git -C "$ROOT" status --porcelain -- Sources Package.swift 2>/dev/null) ]]; then rev="$rev+dirty"; fi
    echo "$rev"
}

# Kill a process we started earlier (pidfile under .lab/bench) if it is still alive.
_kill_pidfile() {
    local pidfile=$1 name=$2 pid _
    [[ -s "$pidfile" ]] || return 0
    pid=$(cat "$pidfile")
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
}

# start_pgbouncer [max_client_conn]  -> sets PGB_STATUS
start_pgbouncer() {
    local max_client=${1:-1000} verifier _
    mkdir -p "$PGB_DIR"
    _kill_pidfile "$PGB_PIDFILE" pgbouncer   # leftover from an interrupted run
    if port_open "$PGB_PORT"; then PGB_STATUS="port $PGB_PORT already in use"; log "pgbouncer: $PGB_STATUS"; return 1; fi

    verifier=$(psql_su -d postgres -tAc "select rolpassword from pg_authid where rolname = '$BENCH_USER'")
    [[ "$verifier" == SCRAM-SHA-256* ]] || { PGB_STATUS="no SCRAM verifier for $BENCH_USER in pg_authid"; log "pgbouncer: $PGB_STATUS"; return 1; }
    printf '"%s" "%s"\n' "$BENCH_USER" "$verifier" >"$PGB_DIR/userlist.txt"
    chmod 600 "$PGB_DIR/userlist.txt"
    : >"$PGB_LOG"

    cat >"$PGB_INI" <<EOF
; generated by loadtest/lib.sh — do not edit
[databases]
$BENCH_DB = host=127.0.0.1 port=$PG_PORT dbname=$BENCH_DB
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $PGB_DIR/userlist.txt
pool_mode = transaction
max_client_conn = $max_client
default_pool_size = 40
min_pool_size = 0
reserve_pool_size = 0
server_tls_sslmode = disable
client_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits,options
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 60
logfile = $PGB_LOG
pidfile = $PGB_PIDFILE
EOF
    raise_nofile
    # `ulimit` inside: runuser goes through pam_limits, which resets the soft fd limit to 1024.
    # shellcheck disable=SC2016
    local -a cmd=(bash -c 'ulimit -Sn "$(ulimit -Hn)" 2>/dev/null; exec pgbouncer -d -q "$1"' pgbouncer "$PGB_INI")
    if [[ $EUID -eq 0 ]]; then
        # PgBouncer refuses to run as root.
        chown -R postgres: "$PGB_DIR"
        cmd=(runuser -u postgres -- "${cmd[@]}")
    fi
    "${cmd[@]}" >>"$PGB_LOG" 2>&1 || true
    for _ in $(seq 1 100); do
        port_open "$PGB_PORT" && [[ -s "$PGB_PIDFILE" ]] && break
        sleep 0.1
    done
    if ! port_open "$PGB_PORT"; then
        PGB_STATUS="failed to start"
        log "pgbouncer failed to start; log tail:"; tail -n 20 "$PGB_LOG" >&2
        return 1
    fi
    PGB_STARTED=1
    if ! psql_bench "$PGB_PORT" -tAc 'select 1' >/dev/null 2>>"$PGB_LOG"; then
        PGB_STATUS="started but a test query failed"
        log "pgbouncer: $PGB_STATUS; log tail:"; tail -n 20 "$PGB_LOG" >&2
        return 1
    fi
    PGB_STATUS=ok
    log "pgbouncer $(pgbouncer_version) up on 127.0.0.1:$PGB_PORT (pid $(cat "$PGB_PIDFILE"), transaction mode, pool 40, max_client_conn $max_client)"
}

pgbouncer_pid() { cat "$PGB_PIDFILE" 2>/dev/null; }

stop_pgbouncer() {
    [[ $PGB_STARTED -eq 1 ]] || return 0
    _kill_pidfile "$PGB_PIDFILE" pgbouncer
    PGB_STARTED=0
}

# Resolve the Tidegate binary; build it when it is missing and TIDEGATE_BIN is unset
# (unless TIDEGATE_NO_BUILD=1). Sets TG_BIN, or TG_STATUS/TG_DETAIL on failure.
TG_BIN=""
resolve_tidegate_bin() {
    local bin=${TIDEGATE_BIN:-$ROOT/.build/release/tidegate}
    [[ "$bin" == /* ]] || bin="$PWD/$bin"
    if [[ -x "$bin" && -f "$bin" ]]; then TG_BIN=$bin; return 0; fi
    if [[ -n "${TIDEGATE_BIN:-}" ]]; then
        TG_STATUS="not built"; TG_DETAIL="TIDEGATE_BIN=$TIDEGATE_BIN does not exist or is not executable"
        return 1
    fi
    if [[ "${TIDEGATE_NO_BUILD:-0}" == 1 ]]; then
        TG_STATUS="not built"; TG_DETAIL="$bin is missing (TIDEGATE_NO_BUILD=1, build skipped)"
        return 1
    fi
    log "tidegate binary missing; building: swift build -c release --product tidegate"
    mkdir -p "$BENCH_DIR"
    if ! (cd "$ROOT" && swift build -c release --product tidegate) >"$BENCH_DIR/build.log" 2>&1; then
        TG_STATUS="failed to build"; TG_DETAIL=$(tail -n 15 "$BENCH_DIR/build.log")
        return 1
    fi
    [[ -x "$bin" ]] || { TG_STATUS="not built"; TG_DETAIL="build succeeded but $bin is missing"; return 1; }
    TG_BIN=$bin
}

# Copy config/tidegate.yaml, changing listen.port and http.port. TG_TOPOLOGY chooses the nodes:
# "primary" (default: the lab primary only, every statement there, as PgBouncer is set up),
# "lab" (the file's regions: reads to the us-east replica), or "spread" (all three lab nodes in one
# region, so reads spread over both replicas, least busy first). TG_CONFIG_OVERLAY, when set, is YAML
# merged on top (mappings key by key, anything else replaced), e.g. a cache: section.
write_tidegate_config() {
    mkdir -p "$BENCH_DIR"
    TG_CONFIG_OVERLAY=${TG_CONFIG_OVERLAY:-} python3 - "$ROOT/config/tidegate.yaml" "$TG_CONFIG" "$TG_PORT" "$TG_HTTP_PORT" "${TG_TOPOLOGY:-primary}" "$PG_PORT" <<'PY' \
        || die "could not write $TG_CONFIG"
import os, sys, yaml
src, dst, port, http_port, topology, pg_port = sys.argv[1:7]
cfg = yaml.safe_load(open(src))
def merge(base, top):
    for k, v in top.items():
        base[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base
cfg["listen"]["port"] = int(port)
cfg["http"]["port"] = int(http_port)
if topology == "primary":
    cfg.pop("region", None)
    cfg.pop("regions", None)
    cfg["primary"] = {"host": "127.0.0.1", "port": int(pg_port)}
elif topology == "spread":
    nodes = {}
    for region in cfg["regions"].values():
        nodes.update(region["nodes"])
    cfg["region"] = "lab"
    cfg["regions"] = {"lab": {"nodes": nodes}}
elif topology != "lab":
    sys.exit(f"unknown TG_TOPOLOGY {topology}")
merge(cfg, yaml.safe_load(os.environ.get("TG_CONFIG_OVERLAY") or "{}") or {})
open(dst, "w").write("# generated by loadtest/lib.sh from config/tidegate.yaml\n" + yaml.safe_dump(cfg, sort_keys=False))
PY
}

_tg_fail() {
    TG_STATUS=$1
    TG_DETAIL=$(tail -n 20 "$TG_LOG" 2>/dev/null)
    log "tidegate: $TG_STATUS; log tail:"; printf '%s\n' "$TG_DETAIL" | sed 's/^/    /' >&2
}

# start_tidegate -> sets TG_STATUS (ok | not built | failed to build | failed to start) and TG_PID
start_tidegate() {
    local bin _ timeout=${TIDEGATE_START_TIMEOUT:-30}
    TG_STATUS=""; TG_DETAIL=""
    _kill_pidfile "$TG_PIDFILE" tidegate
    if ! resolve_tidegate_bin; then
        log "tidegate: $TG_STATUS — $TG_DETAIL"
        return 1
    fi
    bin=$TG_BIN
    write_tidegate_config
    if port_open "$TG_PORT"; then
        TG_STATUS="failed to start"; TG_DETAIL="port $TG_PORT already in use by another process"
        log "tidegate: $TG_DETAIL"; return 1
    fi
    raise_nofile
    : >"$TG_LOG"
    # shellcheck disable=SC2086 # TIDEGATE_SERVE_ARGS is a list of arguments
    "$bin" serve --config "$TG_CONFIG" ${TIDEGATE_SERVE_ARGS:-} >>"$TG_LOG" 2>&1 </dev/null &
    TG_PID=$!
    TG_STARTED=1
    echo "$TG_PID" >"$TG_PIDFILE"
    for _ in $(seq 1 $((timeout * 10))); do
        kill -0 "$TG_PID" 2>/dev/null || break
        port_open "$TG_PORT" && break
        sleep 0.1
    done
    if ! kill -0 "$TG_PID" 2>/dev/null; then
        wait "$TG_PID" 2>/dev/null; local rc=$?
        TG_STARTED=0; rm -f "$TG_PIDFILE"
        _tg_fail "failed to start"; TG_DETAIL="exited with status $rc before listening on $TG_PORT"$'\n'"$TG_DETAIL"
        return 1
    fi
    if ! port_open "$TG_PORT"; then
        _tg_fail "failed to start"; TG_DETAIL="not listening on $TG_PORT after ${timeout}s"$'\n'"$TG_DETAIL"
        stop_tidegate
        return 1
    fi
    if ! psql_bench "$TG_PORT" -tAc 'select 1' >/dev/null 2>>"$TG_LOG"; then
        log "tidegate: listening on $TG_PORT but a test query failed (runs will record the failures); log tail:"
        tail -n 10 "$TG_LOG" | sed 's/^/    /' >&2
    fi
    TG_STATUS=ok
    log "tidegate up on 127.0.0.1:$TG_PORT (pid $TG_PID, $bin, config $TG_CONFIG)"
}

stop_tidegate() {
    [[ $TG_STARTED -eq 1 ]] || return 0
    _kill_pidfile "$TG_PIDFILE" tidegate
    wait "$TG_PID" 2>/dev/null || true
    TG_STARTED=0
}

# run_child OUTFILE ERRFILE CMD...: run a measurement command in the background (stdout to
# OUTFILE, stderr to ERRFILE or, when ERRFILE is "", to OUTFILE) and wait for it, so that an
# INT/TERM trap fires at once (bash defers traps while a foreground child runs); the cleanup
# stops it. Returns the command's exit status.
CHILD_PID=""
run_child() {
    local outfile=$1 errfile=$2; shift 2
    if [[ -n "$errfile" ]]; then
        "$@" >"$outfile" 2>>"$errfile" </dev/null &
    else
        "$@" >"$outfile" 2>&1 </dev/null &
    fi
    CHILD_PID=$!
    wait "$CHILD_PID"
    local rc=$?
    CHILD_PID=""
    return $rc
}

# Stop the measurement command run_child is waiting for (for cleanup traps).
stop_child() {
    if [[ -n "$CHILD_PID" ]] && kill -0 "$CHILD_PID" 2>/dev/null; then
        kill -TERM "$CHILD_PID" 2>/dev/null; wait "$CHILD_PID" 2>/dev/null
    fi
    return 0
}

bench_cleanup() {
    local rc=$?
    stop_child
    stop_tidegate
    stop_pgbouncer
    return $rc
}

# md_replace_section FILE HEADING BODYFILE
# Replace the "## HEADING" section of FILE (up to the next "## " heading) with BODYFILE,
# or append it; the rest of FILE is kept. Creates FILE with a title when missing.
md_replace_section() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, sys
path, heading, body_path = sys.argv[1:4]
body = open(body_path).read().rstrip("\n") + "\n"
if not body.startswith(heading):
    body = heading + "\n\n" + body
text = open(path).read() if os.path.exists(path) else "# Tidegate benchmarks\n"
lines = text.splitlines(keepends=True)
start = next((i for i, l in enumerate(lines) if l.rstrip("\n").rstrip() == heading), None)
if start is None:
    out = text.rstrip("\n") + "\n\n" + body
else:
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    before = "".join(lines[:start])
    after = "".join(lines[end:])
    out = before + body + ("\n" + after if after else "")
os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
open(path, "w").write(out)
PY
}

# publish_section FILE HEADING BODYFILE: replace the section in FILE (md_replace_section), print it and
# say where it and the raw results ($RUN_DIR) went.
publish_section() {
    local out=$1 heading=$2 section=$3
    [[ -s "$section" ]] || die "report generation failed"
    md_replace_section "$out" "$heading" "$section" || die "could not write $out"
    echo
    cat "$section"
    echo
    log "wrote section \"$heading\" to ${out#"$ROOT"/}; raw results in ${RUN_DIR#"$ROOT"/}"
}

# ---------------------------------------------------------------------------------------------
# Helpers added with bench-batch (usable by any script).

# use_tidegate_instance NAME PORT HTTP_PORT: point the start/stop helpers at one of several Tidegate
# instances (config, log and pidfile .lab/bench/NAME.*). One instance runs at a time this way: stop it
# before switching to the next.
use_tidegate_instance() {
    TG_PORT=$2
    TG_HTTP_PORT=$3
    TG_CONFIG="$BENCH_DIR/$1.yaml"
    TG_LOG="$BENCH_DIR/$1.log"
    TG_PIDFILE="$BENCH_DIR/$1.pid"
}

# tidegate_has_feature TEXT: whether the resolved binary (TG_BIN) contains TEXT, e.g. an admin
# command it answers ("SHOW BATCHES"). A cheap probe before starting an instance configured for it.
tidegate_has_feature() { [[ -n "$TG_BIN" ]] && LC_ALL=C grep -aqF -- "$1" "$TG_BIN"; }

# migrate_database DB [--fresh]: create DB (owner $BENCH_USER) when it does not exist, or drop and
# recreate it with --fresh, then `tidegate migrate` it (a no-op when it is up to date). Needs TG_BIN
# (resolve_tidegate_bin).
migrate_database() {
    local db=$1 fresh=${2:-}
    [[ -n "$TG_BIN" ]] || die "migrate_database needs the tidegate binary"
    if [[ "$fresh" == --fresh ]]; then
        psql_su -d postgres -c "drop database if exists $db with (force)" || die "could not drop $db"
    fi
    if [[ $(psql_su -d postgres -tAc "select 1 from pg_database where datname = '$db'") != 1 ]]; then
        log "creating database $db"
        psql_su -d postgres -c "create database $db owner $BENCH_USER" || die "could not create $db"
    fi
    mkdir -p "$BENCH_DIR"
    printf 'primary: {host: 127.0.0.1, port: %s}\nusers:\n  %s: {password: tidegate}\n' "$PG_PORT" "$BENCH_USER" \
        >"$BENCH_DIR/migrate.yaml"
    "$TG_BIN" migrate --config "$BENCH_DIR/migrate.yaml" --database "$db" --dir "$ROOT/migrations" >&2 \
        || die "tidegate migrate of $db failed"
}

# pgbouncer_supports_prepared: PgBouncer >= 1.21 (max_prepared_statements) can run pgbench -M prepared
# in transaction mode; older ones fail with 'prepared statement "P_0" already exists'.
pgbouncer_supports_prepared() {
    local v
    v=$(pgbouncer_version)
    [[ "$v" =~ ^([0-9]+)\.([0-9]+) ]] || return 1
    (( BASH_REMATCH[1] > 1 || (BASH_REMATCH[1] == 1 && BASH_REMATCH[2] >= 21) ))
}

# pgbench_summary LOGFILE -> one tab-separated line: tps, latency average (ms), transactions processed,
# failed transactions, first error line (empty fields when pgbench did not print them).
pgbench_summary() {
    local out=$1 tps lat n failed err
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out" | tail -1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | tail -1)
    n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | tail -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | tail -1)
    err=$(grep -m1 -E 'error|ERROR|FATAL|aborted|could not|timeout' "$out" | tr '\t' ' ' | cut -c1-300)
    printf '%s\t%s\t%s\t%s\t%s\n' "$tps" "$lat" "$n" "$failed" "$err"
}

# tx_latency_percentiles PREFIX -> "p50 p99 p999 max count" in ms of the transactions in pgbench's
# per-transaction logs PREFIX.* (pgbench -l --log-prefix=PREFIX; latency is the third column, in µs).
# Prints "- - - - 0" when there are none.
tx_latency_percentiles() {
    python3 - "$1" <<'PY'
import glob, sys
xs = []
for path in glob.glob(sys.argv[1] + ".*"):
    with open(path) as f:
        for line in f:
            p = line.split(None, 3)
            if len(p) >= 3 and p[2].isdigit():
                xs.append(int(p[2]))
if not xs:
    print("- - - - 0")
else:
    xs.sort()
    pick = lambda q: xs[min(len(xs) - 1, max(0, -(-int(q * 1000) * len(xs) // 1000) - 1))] / 1000.0
    print(f"{pick(0.50):.3f} {pick(0.99):.3f} {pick(0.999):.3f} {xs[-1] / 1000.0:.3f} {len(xs)}")
PY
}

# tidegate_binary_line BIN -> how the report names the binary: its path, modification time and, when it
# lies inside a git checkout (e.g. another worktree's .build/), that checkout's revision (+dirty when
# Sources or Package.swift have changes there). A debug build is flagged.
tidegate_binary_line() {
    local bin=$1 dir top rev mtime line
    [[ -n "$bin" && -f "$bin" ]] || { echo "(no binary)"; return; }
    mtime=$(date -u -r "$bin" '+%Y-%m-%d %H:%M UTC')
    line="\`${bin#"$ROOT"/}\` (built $mtime"
    dir=$(dirname "$bin")
    if top=$(git -C "$dir" rev-parse --show-toplevel 2>/dev/null); then
        rev=$(git -C "$top" rev-parse --short HEAD 2>/dev/null)
        [[ -n $(git -C "$top" status --porcelain -- Sources Package.swift 2>/dev/null) ]] && rev="$rev+dirty"
        line+=", from $top at $rev"
    fi
    line+=")"
    [[ "$bin" == */debug/* ]] && line+=" — **a debug build: its numbers say nothing about a release build**"
    echo "$line"
}
