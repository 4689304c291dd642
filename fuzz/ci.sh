#!/usr/bin/env bash
# CI's fuzz section (called by .ci/run): build every fuzz target once, then run each
# for FUZZ_SECONDS (default 30) from a temporary copy of the committed corpus, two at
# a time (2 cores). Any crash, timeout or build failure fails CI; crash inputs are in
# fuzz/artifacts/<target>/ (git-ignored) and their logs are printed.
#
# Built with `--sanitizer none`: a cold AddressSanitizer build of the dependency tree
# takes ~10 min on 2 cores against ~3.5 min without, and simian is Rust (the targets
# check properties, which need no sanitizer). Debug assertions and overflow checks stay
# on (cargo fuzz's default), so `debug_assert!`s in src/ are checked too.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-30}
TARGETS=(request_head response_head chunked rewrite config exchange)
start=$(date +%s)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked -j2

# cargo fuzz wants a nightly toolchain. A machine with only stable gets it to accept
# the nightly-only flags with RUSTC_BOOTSTRAP (the sanitizer-none build uses no
# unstable feature of the code itself).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ=(cargo +nightly fuzz)
else
    echo "fuzz: no nightly toolchain, using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
fi
FLAGS=(--sanitizer none)

export CARGO_BUILD_JOBS=2
"${FUZZ[@]}" build "${FLAGS[@]}"
built=$(date +%s)
echo "fuzz: targets built in $((built - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {
    local t=$1
    mkdir -p "$work/corpus/$t"
    cp fuzz/corpus/"$t"/* "$work/corpus/$t/"
    # -timeout: one input taking 20 s is a hang (or a quadratic path), a failure.
    # The inputs of past findings run first, with the corpus (a second corpus
    # directory is read, never written).
    local extra=()
    if [ -d "fuzz/regressions/$t" ]; then extra=("fuzz/regressions/$t"); fi
    "${FUZZ[@]}" run "${FLAGS[@]}" "$t" "$work/corpus/$t" "${extra[@]}" -- \
        -max_total_time="$SECONDS_EACH" -timeout=20 -print_final_stats=1 \
        >"$work/$t.log" 2>&1
}

failed=()
pids=()
names=()
flush() {
    local i
    for i in "${!pids[@]}"; do
        if wait "${pids[$i]}"; then
            echo "fuzz: ${names[$i]}: ok, $(grep -m1 'stat::number_of_executed_units' "$work/${names[$i]}.log" | awk '{print $2}') runs"
        else
            failed+=("${names[$i]}")
            echo "fuzz: ${names[$i]} FAILED; its log:"
            tail -n 80 "$work/${names[$i]}.log"
        fi
    done
    pids=()
    names=()
}
for t in "${TARGETS[@]}"; do
    run "$t" &
    pids+=($!)
    names+=("$t")
    if [ "${#pids[@]}" -ge 2 ]; then flush; fi
done
flush

echo "fuzz: section took $(($(date +%s) - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)"
    exit 1
fi
