#!/bin/bash
# Runs scenarios one after the other and reports each as one machine-parsable line,
#   SCENARIO <name> PASS   or   SCENARIO <name> SKIP <why>   or   SCENARIO <name> FAIL rc=<n>
# which ci/guest.sh collects. A scenario is skipped when it ends through skip_scenario
# (ci/scenarios/lib.sh): exit status 77 and its reason in $SCENARIO_SKIP_FILE; a 77
# without a reason is a failure like any other. Used inside the guest (from /init) and, on hosts that have
# ublk, directly on the host. Scenario scripts are found next to this runner in the guest
# (/ci/scenarios) or in ci/scenarios in the repository.
#
# No `set -e`: one scenario failing must not stop the others from running.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCENARIO_DIR=${SCENARIO_DIR:-$here/scenarios}
[[ -d $SCENARIO_DIR ]] || SCENARIO_DIR=$here/../scenarios

# Extra environment handed in with `guest.sh --env NAME=VALUE`.
if [[ -f $here/env ]]; then
    # shellcheck source=/dev/null
    . "$here/env"
fi

kernel=$(uname -r)
for name in "$@"; do
    script=$SCENARIO_DIR/$name.sh
    echo
    echo "=================== scenario $name: start on kernel $kernel (uptime $(cut -d' ' -f1 /proc/uptime)s) ==================="
    start=$SECONDS
    SCENARIO_SKIP_FILE=$(mktemp "${TMPDIR:-/tmp}/skip-$name.XXXXXX")
    export SCENARIO_SKIP_FILE
    if [[ -f $script ]]; then
        # stdin from /dev/null: nothing in a scenario may wait for input.
        bash "$script" </dev/null 2>&1
        rc=$?
    else
        echo "no such scenario: $script"
        rc=127
    fi
    echo "=================== scenario $name: finished in $((SECONDS - start))s, rc=$rc ==================="
    # Keep each scenario's daemon logs apart, so the next failure shows only its own.
    if [[ -n ${REWIND_LOG_DIR:-} ]] && compgen -G "$REWIND_LOG_DIR/rewind-*.log" >/dev/null; then
        mkdir -p "$REWIND_LOG_DIR/logs-$name"
        mv "$REWIND_LOG_DIR"/rewind-*.log "$REWIND_LOG_DIR/logs-$name/"
    fi
    skip_reason=$(head -n 1 "$SCENARIO_SKIP_FILE" 2>/dev/null)
    rm -f "$SCENARIO_SKIP_FILE"
    if [[ $rc -eq 0 ]]; then
        echo "SCENARIO $name PASS"
    elif [[ $rc -eq 77 && -n $skip_reason ]]; then
        echo "SCENARIO $name SKIP $skip_reason"
    else
        echo "SCENARIO $name FAIL rc=$rc"
    fi
done
