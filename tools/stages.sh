#!/usr/bin/env bash
# Run every stage even when one fails, then one summary line per stage (verdict, duration);
# exit 1 if any failed. A stage is "name:command" (the command runs in bash from the repo root).
#   tools/stages.sh "lint:make -s lint" "pytest:make -s pytest"      (make test uses it)
set -uo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[stages]\033[0m %s\n' "$*" >&2; }

names=() verdicts=() seconds=()
failed=0
for spec in "$@"; do
  name=${spec%%:*} cmd=${spec#*:}
  say "== $name: $cmd"
  start=$(date +%s.%N)
  if bash -c "$cmd"; then verdict=PASS; else verdict="FAIL (exit $?)"; failed=1; fi
  took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  say "== $name: $verdict after ${took} s"
  names+=("$name") verdicts+=("$verdict") seconds+=("$took")
done

# The summary goes to stdout, plain, one line per stage: the last lines of a CI log.
total=0
for i in "${!names[@]}"; do
  printf '[stages] %-12s %-14s %8s s\n' "${names[$i]}" "${verdicts[$i]}" "${seconds[$i]}"
  total=$(awk -v a="$total" -v b="${seconds[$i]}" 'BEGIN { printf "%.1f", a + b }')
done
printf '[stages] %-12s %-14s %8s s\n' "total" "$([ $failed = 0 ] && echo PASS || echo FAIL)" "$total"
exit $failed
