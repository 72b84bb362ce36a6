#!/bin/sh
# Every run of this sweep on one page, report.html beside this script,
# the seeds of a configuration together (runs are labelled with their
# grid values). Written by the sweep; run it at any time, from anywhere:
# unfinished runs show so far. REPORT=path runs that report binary.
cd "$(dirname "$0")" || exit 1
if [ -n "$REPORT" ]; then
    exec "$REPORT" runs/*/metrics.jsonl -o report.html "$@"
fi
exec ../../../target/release/examples/report runs/*/metrics.jsonl -o report.html "$@"
