#!/usr/bin/env bash
# The APIs as an outside client sees them: both OpenAPI documents checked by an outside
# validator (openapi-spec-validator), then schemathesis with every check against both APIs,
# as an administrator and as an account manager, on a platform started for it (`crm up` on
# the embedded default, in a throw-away data directory). Bounded in time; exits non-zero on
# any failure.
#
#   scripts/api-conformance.sh [SECONDS_PER_RUN]      (default 45: four runs)
#
# Needs the debug `crm` binary ($CARGO_TARGET_DIR/debug/crm; built here when missing) and
# Python 3; schemathesis and openapi-spec-validator are installed once into
# ~/.cache/crm-tools/venv.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-45}
SEED=${CRM_CONFORMANCE_SEED:-20261130}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/crm-target}
CRM_TOOLS=${CRM_TOOLS:-$HOME/.cache/crm-tools}
VENV=$CRM_TOOLS/venv
SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0

installed_schemathesis=$("$VENV/bin/schemathesis" --version 2>/dev/null || true)
installed_validator=$("$VENV/bin/pip" show openapi-spec-validator 2>/dev/null || true)
if [[ $installed_schemathesis != *"$SCHEMATHESIS_VERSION"* ]] \
    || [[ $installed_validator != *"Version: $VALIDATOR_VERSION"* ]]; then
    echo "api-conformance: installing schemathesis $SCHEMATHESIS_VERSION and openapi-spec-validator $VALIDATOR_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$VALIDATOR_VERSION"
fi

cargo build -q -p crm
CRM=$CARGO_TARGET_DIR/debug/crm

work=$(mktemp -d /tmp/crm-conformance.XXXXXX)
# the embedded PostgreSQL runs as `postgres` when this runs as root: it must reach the directory
chmod 755 "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
command_port=$(free_port)
query_port=$(free_port)
"$CRM" up --data-dir "$work/data" --command-listen "127.0.0.1:$command_port" \
    --query-listen "127.0.0.1:$query_port" >"$work/crm-up.log" 2>&1 &
crm_pid=$!
cleanup() {
    kill -TERM "$crm_pid" 2>/dev/null || true
    wait "$crm_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
    if curl -sf "127.0.0.1:$command_port/healthz" >/dev/null && curl -sf "127.0.0.1:$query_port/readyz" >/dev/null; then
        break
    fi
    kill -0 "$crm_pid" 2>/dev/null || { cat "$work/crm-up.log" >&2; echo "api-conformance: crm up exited" >&2; exit 1; }
    sleep 1
done

curl -sf "127.0.0.1:$command_port/openapi.json" >"$work/command.json"
curl -sf "127.0.0.1:$query_port/openapi.json" >"$work/query.json"
"$VENV/bin/openapi-spec-validator" "$work/command.json" "$work/query.json"

admin=$("$CRM" token --data-dir "$work/data" --subject admin-conformance --role administrator)
manager=$("$CRM" token --data-dir "$work/data" --subject am-li --role account_manager)

failed=0
for api in command query; do
    port=$command_port
    [[ $api == query ]] && port=$query_port
    for who in admin manager; do
        token=$admin
        [[ $who == manager ]] && token=$manager
        echo "== schemathesis: $api API as $who (${SECONDS_PER_RUN}s, every check)"
        if ! PYTHONPATH="$PWD/scripts" SCHEMATHESIS_HOOKS=schemathesis_hooks "$VENV/bin/schemathesis" run \
            "http://127.0.0.1:$port/openapi.json" \
            -H "Authorization: Bearer $token" \
            --checks all --phases fuzzing,stateful --max-time "$SECONDS_PER_RUN" --workers 2 \
            --seed "$SEED" --report-dir "$work/report-$api-$who" >"$work/$api-$who.txt" 2>&1; then
            failed=1
            cat "$work/$api-$who.txt"
        else
            grep -E "generated|passed|failures" "$work/$api-$who.txt" | tail -n 3
        fi
    done
done
if ((failed)); then
    echo "api-conformance: schemathesis found failures (above)" >&2
    exit 1
fi
echo "api-conformance: both documents valid; schemathesis found no failures"
