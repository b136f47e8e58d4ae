#!/usr/bin/env bash
# `make demo`: a tour of dtmux on the embedded local provider. Starts a
# controller in a temporary state dir, creates two workspaces, shows
# streaming, exit codes, a detached run reattached, a tmux session and a
# script run in one, then stops everything it started.
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
# Sessions: a tmux server per workspace, private to its agent.
run dtmux session new demo-a dev
say "dtmux session send demo-a dev --enter 'echo hello from tmux'"
dtmux session send demo-a dev --enter 'echo hello from tmux'
sleep 0.5
say "dtmux session capture demo-a dev"
# (the screen's unused rows are left out here)
dtmux session capture demo-a dev | awk 'NF { for (; blank > 0; blank--) print ""; print; next } { blank++ }'
run dtmux session ls demo-a

script=$state/build.sh
printf '#!/bin/sh\necho "building $1"\nfor p in 25 50 75 100; do echo "$p%%"; sleep 0.2; done\necho "tests failed"\nexit 3\n' >"$script"
say "cat build.sh"
cat "$script"
say "dtmux run demo-a build.sh release; echo \"exit code: \$?\"   # uploaded, run in a tmux window"
set +e; dtmux run demo-a "$script" release; code=$?; set -e
echo "exit code: $code"

run dtmux ws ls
printf '\nDone: the controller, its agents and %s are removed on exit.\n' "$state"
