#!/usr/bin/env bash
# Test-bed Kafka: Tansu, an Apache-Kafka-compatible broker written in Rust.
#
#   scripts/kafka-testbed.sh ensure             install tansu into $CRM_TOOLS/bin if missing
#   scripts/kafka-testbed.sh start PORT [DIR]   start a broker on 127.0.0.1:PORT in the background
#                                               (memory storage, or a throw-away SQLite file on tmpfs
#                                               when tansu lacks the memory engine; DIR/tansu.db when
#                                               DIR is given: survives kill -9 and restart)
#   scripts/kafka-testbed.sh stop [PORT]        stop the broker(s) started by `start`
#   scripts/kafka-testbed.sh bin                print the path of the tansu binary
#
# Environment: CRM_TOOLS (default ~/.cache/crm-tools), CRM_KAFKA_RUN (pid and log files,
# default $CRM_TOOLS/run); CRM_TANSU_CRATE, CRM_TANSU_VERSION, CRM_TANSU_FEATURES choose
# what `ensure` installs (default: nisshi 0.7.0 — Tansu's continuation under a new name — with
# its memory (dynostore) and SQLite (libsql) engines; the binary is named after the crate).
# Only the test bed uses it; nothing in the code depends on it.
#
# Why not tansu 0.6.0 (the last release under that name): it has no EndTxn (transactions can
# begin but never commit or abort) and Fetch never lists aborted transactions. Why not nisshi
# 0.8: it refuses every transactional producer ("Nisshi does not support transactions").
# nisshi 0.7.0 has both EndTxn and aborted-transaction lists. It needs rustc >= 1.96; where the
# default toolchain is older, the image's nightly builds it.
set -euo pipefail

TANSU_CRATE=${CRM_TANSU_CRATE:-nisshi}
TANSU_VERSION=${CRM_TANSU_VERSION:-0.7.0}
TANSU_FEATURES=${CRM_TANSU_FEATURES:-dynostore,libsql}
CRM_TOOLS=${CRM_TOOLS:-$HOME/.cache/crm-tools}
RUN_DIR=${CRM_KAFKA_RUN:-$CRM_TOOLS/run}
# One directory per crate and version: changing the version installs the new one.
TANSU_ROOT=$CRM_TOOLS/$TANSU_CRATE-$TANSU_VERSION
TANSU=$TANSU_ROOT/bin/$TANSU_CRATE

die() { echo "kafka-testbed: $*" >&2; exit 1; }

ensure() {
    if [[ -x $TANSU ]]; then
        return 0
    fi
    mkdir -p "$CRM_TOOLS"
    # One build at a time: concurrent callers wait for it, then find the binary.
    exec 9>"$CRM_TOOLS/.tansu-install.lock"
    flock 9
    if [[ -x $TANSU ]]; then
        return 0
    fi
    echo "kafka-testbed: building $TANSU_CRATE $TANSU_VERSION into $CRM_TOOLS (about 10 minutes, once)" >&2
    local toolchain=()
    local minor
    minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
    if [[ $TANSU_CRATE == nisshi ]] && ((minor < 96)) && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        toolchain=(+nightly)
    fi
    cargo "${toolchain[@]}" install "$TANSU_CRATE" --version "$TANSU_VERSION" --locked \
        --no-default-features --features "$TANSU_FEATURES" --root "$TANSU_ROOT"
    [[ -x $TANSU ]] || die "cargo install did not produce $TANSU"
}

wait_for_port() { # PORT PID SECONDS
    local port=$1 pid=$2 deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

launch() { # PORT WORKDIR STORAGE LOG -> pid of the broker
    local port=$1 workdir=$2 storage=$3 log=$4
    (
        cd "$workdir"
        # nisshi's allocator (mimalloc) without transparent huge pages: with them, well over
        # half of the broker's CPU under load was the kernel zeroing fresh 2 MiB pages
        # (clear_page_erms under mi_page_free_list_extend). The same as BROKER_ALLOCATOR_ENV in
        # tests/src/lib.rs, which the tests and crm-bench use.
        MIMALLOC_ALLOW_THP=0 MIMALLOC_ALLOW_LARGE_OS_PAGES=0 \
        exec "$TANSU" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "$storage" \
            </dev/null >>"$log" 2>&1
    ) &
    echo $!
}

start() {
    local port=${1:?usage: start PORT [DATADIR]} datadir=${2:-} pid workdir
    ensure
    mkdir -p "$RUN_DIR"
    local pidfile=$RUN_DIR/tansu-$port.pid log=$RUN_DIR/tansu-$port.log
    local tmpfile=$RUN_DIR/tansu-$port.tmpdir
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        die "a broker started by this script already runs on port $port (pid $(cat "$pidfile"))"
    fi
    : >"$log"
    if [[ -n $datadir ]]; then
        mkdir -p "$datadir"
        workdir=$(cd "$datadir" && pwd)
        # The file is relative to the broker's working directory.
        pid=$(launch "$port" "$workdir" sqlite://tansu.db "$log")
    else
        pid=$(launch "$port" "$RUN_DIR" memory://tansu/ "$log")
        echo "$pid" >"$pidfile"
        if ! wait_for_port "$port" "$pid" 30 && grep -q 'FeatureNotEnabled.*dynostore' "$log"; then
            # tansu 0.6.0 has the memory engine only with the `dynostore` feature, which the
            # cached build (`--features libsql`) lacks: use a throw-away SQLite file on tmpfs.
            local base=/tmp
            [[ -d /dev/shm && -w /dev/shm ]] && base=/dev/shm
            workdir=$(mktemp -d "$base/crm-tansu-$port.XXXXXX")
            echo "$workdir" >"$tmpfile"
            pid=$(launch "$port" "$workdir" sqlite://tansu.db "$log")
        fi
    fi
    echo "$pid" >"$pidfile"
    if ! wait_for_port "$port" "$pid" 30; then
        stop_pidfile "$pidfile"
        tail -n 20 "$log" >&2 || true
        die "tansu did not accept connections on 127.0.0.1:$port"
    fi
    echo "127.0.0.1:$port"
}

stop_pidfile() {
    local pidfile=$1 pid
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    local tmpfile=${pidfile%.pid}.tmpdir
    if [[ -f $tmpfile ]]; then
        rm -rf "$(cat "$tmpfile")"
        rm -f "$tmpfile"
    fi
}

stop() {
    if [[ -n ${1:-} ]]; then
        stop_pidfile "$RUN_DIR/tansu-$1.pid"
    else
        shopt -s nullglob
        for f in "$RUN_DIR"/tansu-*.pid; do stop_pidfile "$f"; done
    fi
}

case ${1:-} in
    ensure) ensure ;;
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    bin) echo "$TANSU" ;;
    *) die "usage: $0 ensure | start PORT [DATADIR] | stop [PORT] | bin" ;;
esac
