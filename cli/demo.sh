#!/usr/bin/env bash
# `make demo`: a tour of dtmux on the embedded local provider. Starts a
# controller in a temporary state dir, creates two workspaces, shows
# streaming, exit codes and a detached run reattached, then stops
# everything it started.
set -euo pipefail
BIN=${1:?usage: demo.sh BIN_DIR}
BIN=$(cd "$BIN" && pwd)
export PATH="$BIN:$PATH"
state=$(mktemp -d "${TMPDIR:-/tmp}/dtmux-demo.XXXXXX")
export DTMUX_STATE_DIR=$state
ctl_pid=

cleanup() {
  set +e
  for ws in demo-a demo-b; do dtmux ws rm --force "$ws" >/dev/null 2>&1; done
  if [ -n "$ctl_pid" ]; then kill "$ctl_pid" 2>/dev/null; wait "$ctl_pid" 2>/dev/null; fi
  rm -rf "$state"
}
trap cleanup EXIT

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold= plain=; fi
say() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; }
run() { say "$*"; "$@"; }

dtmux-controller --state-dir "$state" --log-file "$state/controller.log" --stop-agents-on-exit &
ctl_pid=$!
for _ in $(seq 100); do [ -S "$state/controller.sock" ] && break; sleep 0.05; done

run dtmux ws create demo-a --label team=web
run dtmux ws create demo-b --label team=api
run dtmux ws ls

say "dtmux exec demo-a -- sh -c 'for i in 1 2 3; do echo tick \$i; sleep 0.3; done'"
dtmux exec demo-a -- sh -c 'for i in 1 2 3; do echo tick $i; sleep 0.3; done'

say "dtmux exec demo-b -- sh -c 'echo to stderr >&2; exit 3'; echo \"exit code: \$?\""
set +e; dtmux exec demo-b -- sh -c 'echo to stderr >&2; exit 3'; code=$?; set -e
echo "exit code: $code"

say "printf 'hello\\nworld\\n' | dtmux exec demo-a -- wc -l"
printf 'hello\nworld\n' | dtmux exec demo-a -- wc -l

say "run=\$(dtmux exec -d demo-a -- sh -c 'for i in 1 2 3 4 5; do echo step \$i; sleep 0.4; done')"
run=$(dtmux exec -d demo-a -- sh -c 'for i in 1 2 3 4 5; do echo step $i; sleep 0.4; done')
echo "detached run: $run"
sleep 1
run dtmux runs ls demo-a
say "dtmux runs logs demo-a $run -f   # reattach: everything from the start, then live to the end"
dtmux runs logs demo-a "$run" -f

say "dtmux exec demo-a -- sh -c 'echo \"I am in \$DTMUX_WORKSPACE, run \$DTMUX_RUN_ID\"'"
dtmux exec demo-a -- sh -c 'echo "I am in $DTMUX_WORKSPACE, run $DTMUX_RUN_ID"'
run dtmux ws ls
printf '\nDone: the controller, its agents and %s are removed on exit.\n' "$state"
