#!/usr/bin/env bash
# Check every tier's alert rules and run their unit tests with promtool.
# Usage: config/alerts/check.sh   (needs promtool: apt-get install prometheus)
# Exits non-zero if any rule file is invalid or any test fails.
set -u
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null 2>&1; then
    echo "check.sh: promtool not found (Debian/Ubuntu: apt-get install prometheus)" >&2
    exit 2
fi
status=0
rules=(development.yml testing.yml staging.yml production.yml)
for f in "${rules[@]}"; do
    [ -f "$f" ] || { echo "check.sh: missing $f" >&2; status=1; continue; }
    promtool check rules "$f" || status=1
done
for t in tests/*_test.yml; do
    promtool test rules "$t" || status=1
done
# Every tier file must have its test file.
for f in "${rules[@]}"; do
    [ -f "tests/${f%.yml}_test.yml" ] || { echo "check.sh: no tests/${f%.yml}_test.yml" >&2; status=1; }
done
if [ "$status" -eq 0 ]; then echo "alerts: all rule checks and tests passed"; else echo "alerts: FAILED" >&2; fi
exit "$status"
