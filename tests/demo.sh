#!/usr/bin/env bash
# podwire demo (so far): a pod sandbox = our static pause as PID 1 holding a network
# namespace made by our netns tool. Everything lives in throwaway namespaces and is
# removed on exit, Ctrl-C or failure. The full walkthrough (bridge, services, nodes)
# grows here as the shim and iptables-gen land.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug; PAUSE=$(pwd)/target/pause/pause
[ -t 1 ] && { B=$'\e[1m'; G=$'\e[32m'; R=$'\e[0m'; } || { B=; G=; R=; }
step() { printf '\n%s== %s ==%s\n' "$B" "$*" "$R"; }
show() { printf '%s$ %s%s\n' "$G" "$*" "$R"; "$@"; }

POD=pwdemo-$$-pod
PID1=
cleanup() {
  [ -n "$PID1" ] && kill -TERM "$PID1" 2>/dev/null || true
  $BIN/netns del "$POD" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

step "1. pause: the pod's PID 1 ($(stat -c %s "$PAUSE") bytes, static, no libc)"
show file -b "$PAUSE"
show "$PAUSE" -v

step "2. netns: a pod network namespace, pinned like ip netns does"
show $BIN/netns add "$POD"
show ip netns list
show $BIN/netns exec "$POD" -- ip -br link

step "3. the sandbox: pause as PID 1 of a new pid namespace, inside the pod's netns"
$BIN/netns exec "$POD" -- unshare --pid --fork --kill-child "$PAUSE" &
for _ in $(seq 200); do
  PID1=$(pgrep -n -x pause || true); [ -n "$PID1" ] && [ "$(readlink /proc/$PID1/ns/net)" = "$(ip netns exec "$POD" readlink /proc/self/ns/net)" ] && break; sleep 0.01
done
echo "pause runs as host pid $PID1, $(grep NSpid /proc/$PID1/status | tr '\t' ' ')"
echo "its netns:   $(readlink /proc/$PID1/ns/net)"
echo "pinned ns:   $(ip netns exec "$POD" readlink /proc/self/ns/net)"
show $BIN/netns identify "$PID1"

step "4. zombies: 20 orphans re-parented to pause are reaped"
nsenter -t "$PID1" -p -- sh -c 'for i in $(seq 20); do (sleep 0.2) & done; exit 0'
sleep 0.5
echo "zombie children of pause: $(for c in $(cat /proc/$PID1/task/$PID1/children); do awk '{print $3}' /proc/$c/stat; done | grep -c Z || true)"

step "5. SIGTERM: pause exits 0, the pod namespace is removed"
kill -TERM "$PID1"; wait || true; PID1=
show $BIN/netns del "$POD"
echo; echo "${B}demo: done, nothing left behind${R} ($(ip netns list | grep -c "$POD" || true) namespaces named $POD remain)"
