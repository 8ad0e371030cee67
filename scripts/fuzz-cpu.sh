#!/usr/bin/env bash
# Fuzz one target for a given amount of *CPU* time, not wall time.
#
#   scripts/fuzz-cpu.sh TARGET [CPU_SECONDS] [OUT_DIR]
#
# On a shared machine `-max_total_time=3600` is an hour of wall clock, of
# which the fuzzer may get a few minutes. This runs the target (built
# beforehand with `cd fuzz && cargo fuzz build -s none`) at `nice 19` from
# a scratch copy of its committed corpus and stops it with SIGINT (so
# libFuzzer prints its final statistics) once the process has used
# CPU_SECONDS (default 3600) of user + system time, read from
# /proc/PID/stat. Writes OUT_DIR/{corpus,log,summary} (default
# /tmp/braid-fuzz-TARGET); a crash or leak leaves its input in OUT_DIR and
# makes the script exit non-zero. Merge new coverage into the committed
# corpus afterwards with libFuzzer's set-cover merge (docs/reliability.md).
set -euo pipefail

target=${1:?usage: scripts/fuzz-cpu.sh TARGET [CPU_SECONDS] [OUT_DIR]}
budget=${2:-3600}
out=${3:-/tmp/braid-fuzz-$target}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/fuzz/target/x86_64-unknown-linux-gnu/release/$target
seeds=$root/crates/fuzzing/corpus/$target

[[ -x $bin ]] || { echo "fuzz-cpu: no fuzz build of '$target' at $bin (cd fuzz && cargo fuzz build -s none)" >&2; exit 2; }
[[ -d $seeds ]] || { echo "fuzz-cpu: no committed corpus for '$target' at $seeds" >&2; exit 2; }
[[ $budget =~ ^[0-9]+$ && $budget -gt 0 ]] || { echo "fuzz-cpu: CPU_SECONDS must be a positive whole number, not '$budget'" >&2; exit 2; }

mkdir -p "$out/corpus"
cp -n "$seeds"/* "$out/corpus/" 2>/dev/null || true
tick=$(getconf CLK_TCK)
start=$(date +%s)

nice -n 19 "$bin" "$out/corpus" -artifact_prefix="$out/" -print_final_stats=1 >"$out/log" 2>&1 &
pid=$!
stop() { kill -INT "$pid" 2>/dev/null || true; }
trap 'stop; wait "$pid" 2>/dev/null || true; exit 130' INT TERM HUP

cpu=0
while kill -0 "$pid" 2>/dev/null; do
    # Fields 14 and 15 of /proc/PID/stat (after the parenthesised name).
    if read -r -a f < <(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null); then
        cpu=$(( (f[11] + f[12]) / tick ))
    fi
    if (( cpu >= budget )); then
        stop
        break
    fi
    sleep 5
done
rc=0
wait "$pid" || rc=$?
wall=$(( $(date +%s) - start ))

execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/log" | tail -1 | awk '{print $2}')
newu=$(grep -o 'stat::new_units_added: *[0-9]*' "$out/log" | tail -1 | awk '{print $2}')
cov=$(grep -o 'cov: [0-9]*' "$out/log" | tail -1 | awk '{print $2}')
crashes=$(find "$out" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
summary="target=$target wall_s=$wall cpu_s=$cpu execs=${execs:-?} new_units=${newu:-?} cov=${cov:-?} findings=$crashes exit=$rc"
echo "$summary" | tee "$out/summary"
# libFuzzer exits 0 after SIGINT with its statistics printed; anything it
# found is a failure of this run.
(( crashes == 0 )) || exit 1
