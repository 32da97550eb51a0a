#!/usr/bin/env bash
# Fuzz smoke run: every cargo-fuzz target in fuzz/ for an equal share of FUZZ_SECONDS (60 in all), starting
# from its committed seeds (fuzz/corpus/<target>/seed-*). Fails if any target crashes, naming the input
# libFuzzer saved under fuzz/artifacts/<target>/. New corpus entries go to a scratch directory, so the tree
# stays clean. Needs the nightly toolchain (cargo-fuzz builds with the address sanitizer).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TERM_COLOR=never
total=${FUZZ_SECONDS:-60}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cargo +nightly fuzz build
mapfile -t targets < <(cargo +nightly fuzz list)
each=$(( total / ${#targets[@]} ))
(( each > 0 )) || each=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
    printf '\n---- %s (%ss)\n' "$t" "$each"
    mkdir -p "$scratch/$t"
    # `-timeout`: one input taking 10 s is a hang, and a failure too.
    if ! nice -n 10 cargo +nightly fuzz run "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$each" -timeout=10 -print_final_stats=1 2>"$scratch/$t.log"; then
        grep -E 'panicked at|SUMMARY|Test unit written' "$scratch/$t.log" || tail -n 40 "$scratch/$t.log"
        failed+=("$t")
    else
        grep -E '^#[0-9]+[[:space:]]+DONE|^Done' "$scratch/$t.log" || true
    fi
done

if (( ${#failed[@]} )); then
    printf '\nfuzz targets that crashed: %s (reproduce: cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>)\n' "${failed[*]}"
    exit 1
fi
printf '\nall %d fuzz targets ran %ss each without a crash\n' "${#targets[@]}" "$each"
