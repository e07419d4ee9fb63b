#!/usr/bin/env bash
# The test command of the README: installs and starts what the tests need, then runs them all.
#
#   scripts/test.sh [extra cargo test args]
#
# Needs: Rust (cargo), PostgreSQL on 127.0.0.1:5432 (started here when installed but stopped).
# Kafka: a Tansu broker (Kafka-compatible) is built once into ~/.cache/crm-tools and started by
# the tests themselves, one private broker per test. Set CRM_TEST_KAFKA_BROKERS to use yours.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/crm-target}
export CRM_TEST_DATABASE_URL=${CRM_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

# PostgreSQL: start the local cluster if it is installed but not running.
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    fi
    for _ in $(seq 1 50); do
        (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && break
        sleep 0.2
    done
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null || { echo "test.sh: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
fi

# Kafka-compatible broker for the tests (built once, cached).
bash scripts/kafka-testbed.sh ensure

# Several brokers and databases run side by side; two test threads suit a 2-core machine.
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo test --workspace --locked -- --test-threads="${CRM_TEST_THREADS:-2}" "$@" 2>&1 | tee "$results"

# The APIs as an outside client sees them: both OpenAPI documents through an outside validator,
# then schemathesis with every check, as an administrator and as an account manager
# (CRM_CONFORMANCE_SECONDS per run, four runs; 0 skips it).
if [[ ${CRM_CONFORMANCE_SECONDS:-45} != 0 ]]; then
    bash scripts/api-conformance.sh "${CRM_CONFORMANCE_SECONDS:-45}"
fi

# Fuzzing, bounded (CRM_FUZZ_SECONDS per target, three targets; 0 skips it; longer by hand:
# scripts/fuzz.sh 600).
if [[ ${CRM_FUZZ_SECONDS:-20} != 0 ]]; then
    bash scripts/fuzz.sh "${CRM_FUZZ_SECONDS:-20}"
fi

# One closing line for the whole run: the Rust tests' totals.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1); if ($(i) ~ /^ignored/) s += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$results"
