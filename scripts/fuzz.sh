#!/usr/bin/env bash
# Fuzzing with cargo fuzz (libFuzzer): the CloudEvents decoder, command JSON (parsed, then
# decided), the NDJSON batch parser. Each target runs for SECONDS, starting from the inputs
# kept in fuzz/regressions/<target> (every crash found is kept there once fixed, so it is
# replayed on every run). Prints each target's executions.
#
#   scripts/fuzz.sh [SECONDS]        (default 20 per target; by hand: scripts/fuzz.sh 600)
#
# Needs the nightly toolchain (sanitizers); installs cargo-fuzz into ~/.cache/crm-tools once.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-20}
CRM_TOOLS=${CRM_TOOLS:-$HOME/.cache/crm-tools}
FUZZ_VERSION=0.13.1
export CARGO_TARGET_DIR=${CRM_FUZZ_TARGET_DIR:-$HOME/.cache/crm-fuzz-target}
CARGO_FUZZ=$CRM_TOOLS/cargo-fuzz-$FUZZ_VERSION/bin/cargo-fuzz

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
fi
if [[ ! -x $CARGO_FUZZ ]]; then
    echo "fuzz: installing cargo-fuzz $FUZZ_VERSION into $CRM_TOOLS (once)" >&2
    cargo install cargo-fuzz --version "$FUZZ_VERSION" --locked --root "$CRM_TOOLS/cargo-fuzz-$FUZZ_VERSION"
fi

for target in cloudevents command_json ndjson_batch; do
    corpus=$(mktemp -d)
    mkdir -p "fuzz/regressions/$target"
    echo "== fuzz $target (${SECONDS_PER_TARGET}s)"
    # the working corpus is thrown away; the kept regression inputs seed it
    if ! PATH="$(dirname "$CARGO_FUZZ"):$PATH" cargo +nightly fuzz run "$target" "$corpus" "fuzz/regressions/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$corpus.log" 2>&1; then
        cat "$corpus.log"
        echo "fuzz: $target crashed; the input is under fuzz/artifacts/$target (fix it, then keep it in fuzz/regressions/$target)" >&2
        exit 1
    fi
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$corpus.log" | tail -n 2
    rm -rf "$corpus" "$corpus.log"
done
