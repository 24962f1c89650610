#!/usr/bin/env bash
# Counts the user-space instructions each broker executes per message under callgrind (fan-in, side by side): a measure this noisy VM cannot blur.
#
# Usage: bench/callgrind.sh [hearth|mosquitto|both]   (after
# `cargo build --release -p hearth-daemon -p hearth-bench`; needs the
# valgrind and mosquitto packages; HEARTHD and MOSQUITTO name other
# binaries to measure; CACHE=1 adds callgrind's cache model with this
# VM's caches, L1 of 64 KiB for instructions and 32 KiB for data and its
# 1 MiB L2 as the last level, and prints the misses per message too).
# Each broker runs under callgrind in
# hearth-bench's fan-in scenario at a rate callgrind keeps up with
# (10 devices × 20 msg/s); instrumentation is switched on for 6 s of the
# steady state, and the total is divided by the 1,200 messages of those
# 6 s. The dumps stay in the printed directory for `callgrind_annotate`.
# Instruction counts leave out the kernel and cache misses, which dominate
# at home loads: use them to find and check user-space work, and the
# benchmark for what a change is worth (docs/BENCHMARKS.md).
set -euo pipefail

which=${1:-both}
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/target/release/hearth-bench
hearthd=${HEARTHD:-$root/target/release/hearthd}
mosquitto=${MOSQUITTO:-/usr/sbin/mosquitto}
devices=10 rate=20 seconds=6
out=$(mktemp -d /tmp/hearth-callgrind.XXXXXX)
cache_model=""
[ "${CACHE:-0}" = 1 ] && cache_model="--cache-sim=yes --I1=65536,4,64 --D1=32768,8,64 --LL=1048576,16,64"

for tool in valgrind callgrind_control callgrind_annotate; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind)" >&2; exit 1; }
done
[ -x "$bench" ] && [ -x "$hearthd" ] || {
    echo "build first: cargo build --release -p hearth-daemon -p hearth-bench" >&2
    exit 1
}

# A wrapper the bench starts in place of the broker: the broker under
# callgrind, instrumentation off until switched on.
wrapper() { # name binary
    printf '#!/bin/sh\nexec valgrind --tool=callgrind %s --instr-atstart=no --callgrind-out-file=%s/%s.%%p %s "$@"\n' \
        "$cache_model" "$out" "$1" "$2" >"$out/$1-wrapper"
    chmod +x "$out/$1-wrapper"
}

measure() { # name, what the broker's command line has (not the bench's setup runs), bench options...
    local name=$1 serving=$2
    shift 2
    "$bench" "$@" --scenarios fanin --fanin-devices $devices --fanin-rate $rate \
        --runs 1 --warmup 10 --window 20 --json "$out/$name.json" --svg "$out/$name.svg" \
        >"$out/$name.log" 2>&1 &
    local run=$!
    # The serving broker's process: callgrind's, writing to this
    # directory, the newest one and still there 3 s later (the bench
    # starts hearthd for its setup first).
    local pid="" seen=""
    for _ in $(seq 1 80); do
        seen=$(pgrep -n -f -- "--callgrind-out-file=$out/$name\\..* $serving" || true)
        sleep 3
        if [ -n "$seen" ] && kill -0 "$seen" 2>/dev/null \
            && [ "$seen" = "$(pgrep -n -f -- "--callgrind-out-file=$out/$name\\..* $serving" || true)" ]; then
            pid=$seen
            break
        fi
    done
    [ -n "$pid" ] || { echo "$name: the broker did not start under callgrind" >&2; cat "$out/$name.log" >&2; exit 1; }
    # Connected, subscribed and publishing: the bench's warm-up.
    sleep 9
    callgrind_control -i on "$pid" >/dev/null 2>&1
    sleep $seconds
    callgrind_control -d "$pid" >/dev/null 2>&1
    callgrind_control -i off "$pid" >/dev/null 2>&1
    wait "$run" || { echo "$name: the bench failed" >&2; cat "$out/$name.log" >&2; exit 1; }
    local dump=$out/$name.$pid.1
    local totals total
    totals=$(callgrind_annotate "$dump" | grep 'PROGRAM TOTALS')
    total=$(echo "$totals" | awk '{ gsub(",", "", $1); print $1 }')
    local messages=$((devices * rate * seconds))
    echo "$name: $total instructions in ${seconds} s, $((total / messages)) per message ($dump)"
    if [ -n "$cache_model" ]; then
        # Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw: misses per message.
        echo "$totals" | awk -v n="$messages" -v name="$name" '{
            for (i = 1; i <= NF; i++) if ($i !~ /^\(/) { gsub(",", "", $i); v[++k] = $i }
            printf "%s per message: L1 instruction misses %d, L1 data misses %d, last-level misses %d\n",
                name, v[4] / n, (v[5] + v[6]) / n, (v[7] + v[8] + v[9]) / n }'
    fi
}

if [ "$which" = hearth ] || [ "$which" = both ]; then
    wrapper hearthd "$hearthd"
    measure hearthd --config --hearth-only --hearthd "$out/hearthd-wrapper"
fi
if [ "$which" = mosquitto ] || [ "$which" = both ]; then
    wrapper mosquitto "$mosquitto"
    # The bench runs Hearth first (as it is, not measured), then Mosquitto.
    measure mosquitto "-c " --mosquitto "$out/mosquitto-wrapper"
fi
