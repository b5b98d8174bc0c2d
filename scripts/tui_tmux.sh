#!/usr/bin/env bash
# Run the llama-tui app in a detached tmux session, type a prompt, and print the screen:
# what a person sees over SSH. Usage:
#   scripts/tui_tmux.sh [PROMPT] [-- extra llama-tui chat flags]
# Env: COLS/ROWS (default 120x36; 80x24 is what most SSH clients open), WAIT (most seconds
#      to wait for the reply, default 60: until the Metrics pane shows "reply N tokens", or,
#      below 110 columns, the strip above the prompt shows the finished reply's tok/s),
#      LLAMA_TUI (command to run, default "python -m tui.cli.main"), KEEP=1 keeps the session.
set -euo pipefail
prompt="${1:-Write a haiku about llamas.}"
shift || true
[[ "${1:-}" == "--" ]] && shift
cols="${COLS:-120}" rows="${ROWS:-36}" wait_s="${WAIT:-60}"
cmd="${LLAMA_TUI:-python -m tui.cli.main}"
session="llama-tui-$$"
root="$(cd "$(dirname "$0")/.." && pwd)"
tmux new-session -d -s "$session" -x "$cols" -y "$rows" \
    "cd '$root' && PYTHONPATH='$root' $cmd chat $* ; sleep 30"
cleanup() { [[ -n "${KEEP:-}" ]] || tmux kill-session -t "$session" 2>/dev/null || true; }
trap cleanup EXIT
# wait for the model-ready notice, then type the prompt
for _ in $(seq 1 60); do
    sleep 1
    tmux capture-pane -p -t "$session" | grep -q "profile .*: .* on " && break
done
tmux send-keys -t "$session" -l "$prompt"
tmux send-keys -t "$session" Enter
# wait for the reply to finish, at most WAIT seconds
for _ in $(seq 1 "$wait_s"); do
    sleep 1
    tmux capture-pane -p -t "$session" \
        | grep -Eq "reply  *[0-9][0-9,]* tokens|^ [0-9][0-9.,]* tok/s · TTFT" && break
done
tmux capture-pane -p -t "$session"
