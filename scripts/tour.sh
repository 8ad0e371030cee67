#!/usr/bin/env bash
# Run the README's "A short tour" exactly as written, line by line, so the
# README cannot promise what braid does not do (CI runs this after the
# tests). Usage: scripts/tour.sh [BRAID_BINARY]   (default: target/debug/braid)
#
# Every ```sh block of the section runs in one shell, in a scratch
# directory that sees the repository's examples/ and crates/, with `braid`
# on the PATH. A line whose comment says "(exits N)" must exit with N; every
# other line must succeed. Background jobs, the testbed and the scratch
# directory are removed on every exit. Root is needed for the live block.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
braid=$(realpath "${1:-$repo/target/debug/braid}")
[ -x "$braid" ] || { echo "tour: no braid binary at $braid (build it first)" >&2; exit 2; }

scratch=$(mktemp -d /tmp/braid-tour.XXXXXX)
cleanup() {
    local pids
    pids=$(jobs -p)
    [ -n "$pids" ] && kill $pids 2>/dev/null && wait 2>/dev/null
    "$braid" testbed down >/dev/null 2>&1 || true
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mkdir "$scratch/bin"
ln -s "$braid" "$scratch/bin/braid"
ln -s "$repo/examples" "$repo/crates" "$repo/scripts" "$scratch/"
export PATH="$scratch/bin:$PATH"
cd "$scratch"

# The fenced sh blocks between "## A short tour" and the next "## " heading.
lines=$(awk '
    /^## A short tour/ { in_tour = 1; next }
    in_tour && /^## / { exit }
    in_tour && /^```sh/ { in_block = 1; next }
    in_tour && /^```/ { in_block = 0; next }
    in_block && NF { print }
' "$repo/README.md")
[ -n "$lines" ] || { echo "tour: no sh blocks under '## A short tour' in README.md" >&2; exit 2; }

n=0
while IFS= read -r line; do
    n=$((n + 1))
    expect=0
    if [[ $line =~ \(exits\ ([0-9]+)\) ]]; then expect=${BASH_REMATCH[1]}; fi
    printf '\n+ %s\n' "$line"
    eval "$line" </dev/null
    status=$?
    if [ "$status" -ne "$expect" ]; then
        echo "tour: line $n exited $status, expected $expect: $line" >&2
        exit 1
    fi
done <<<"$lines"
echo
echo "tour: all $n lines ran as the README says"
