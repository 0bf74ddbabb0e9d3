# Shared helpers for .ci/cluster/{up,down,cut,heal}. Sourced, not executed.
# shellcheck shell=bash

STATE="${PPOOL_CLUSTER_STATE:-/tmp/ppool-cluster}"
NODES=(1 2)                     # host n <-> netns ppool-n$n <-> 10.231.$n.0/24
NS_PREFIX=ppool-n
SUBNET_PREFIX=10.231
SLURMCTLD_PORT=16817            # non-default ports: no clash with a system Slurm
SLURMD_PORT=16818
# slurmctld's address, on the root namespace's loopback: every host reaches it through its own
# veth (a route inside each namespace), so it stays reachable from one host while another is cut.
CTLD_ADDR="${SUBNET_PREFIX}.0.1"

log()  { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

ns_name()   { echo "${NS_PREFIX}$1"; }
veth_root() { echo "ppool-v$1r"; }      # end in the root namespace
veth_ns()   { echo "ppool-v$1n"; }      # end inside ppool-n$n
ip_root()   { echo "${SUBNET_PREFIX}.$1.1"; }
ip_ns()     { echo "${SUBNET_PREFIX}.$1.2"; }
slurm_node() { echo "node$1"; }         # the Slurm node that host n is (its slurmd runs in ppool-n$n)

# Static ARP both ways between host n and the root namespace, and the route to slurmctld
# inside its namespace. Setting the veth inside the namespace down (`cut`) drops both from the
# namespace, so `heal` calls this again after `up` did.
wire_host() {
    local n="$1" ns vr vn mac_r mac_n
    ns="$(ns_name "$n")" vr="$(veth_root "$n")" vn="$(veth_ns "$n")"
    mac_r="$(cat "/sys/class/net/$vr/address")"
    mac_n="$(ip netns exec "$ns" cat "/sys/class/net/$vn/address")"
    # Static ARP: during a `cut`, ARP would otherwise fail after ~3 s and turn the silent
    # drop into EHOSTUNREACH ("No route to host").
    ip neigh replace "$(ip_ns "$n")" lladdr "$mac_n" dev "$vr" nud permanent &&
        ip netns exec "$ns" ip neigh replace "$(ip_root "$n")" lladdr "$mac_r" dev "$vn" nud permanent &&
        ip netns exec "$ns" ip route replace "$CTLD_ADDR/32" via "$(ip_root "$n")" dev "$vn"
}

check_node_arg() {
    local n="${1:-}"
    [[ "$n" =~ ^[0-9]+$ ]] || die "usage: $(basename "$0") <n>   (n = 1 or 2)"
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$(ns_name "$n")" \
        || die "namespace $(ns_name "$n") does not exist (did .ci/cluster/up run?)"
}

# Print the log tail of a daemon that failed, then die.
fail_with_log() {
    local what="$1" logfile="$2"
    printf '[cluster] ERROR: %s\n' "$what" >&2
    if [[ -f "$logfile" ]]; then
        printf '[cluster] ---- last lines of %s ----\n' "$logfile" >&2
        tail -n 30 "$logfile" >&2 || true
        printf '[cluster] ----\n' >&2
    else
        printf '[cluster] (no log file %s)\n' "$logfile" >&2
    fi
    exit 1
}

# Wait until a pid file exists and names a live process; echo the pid.
wait_pidfile() {
    local f="$1" tries="${2:-100}" pid
    for ((i = 0; i < tries; i++)); do
        if [[ -s "$f" ]]; then
            pid="$(tr -dc '0-9' <"$f")"
            if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
                echo "$pid"; return 0
            fi
        fi
        sleep 0.1
    done
    return 1
}

# Live (and not a zombie).
alive() {
    [[ "$1" =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null || return 1
    local st
    st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
    [[ "$st" != Z && "$st" != X ]]
}

record_pid() {   # record_pid <name> <pid>
    echo "$1 $2" >>"$STATE/pids"
}

# All descendants of the given pids (not including them), from one ps snapshot.
descendants() {
    [[ $# -gt 0 ]] || return 0
    ps -e -o pid=,ppid= | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
        { kids[$2] = kids[$2] " " $1 }
        END {
            for (p in want) queue[++qn] = p
            for (i = 1; i <= qn; i++) {
                m = split(kids[queue[i]], k, " ")
                for (j = 1; j <= m; j++) if (!(k[j] in seen)) { seen[k[j]] = 1; print k[j]; queue[++qn] = k[j] }
            }
        }'
}

# Processes whose environment carries our marker (daemons we started, and
# e.g. slurmstepd which inherits slurmd's environment).
marked_pids() {
    local mark="$1" p
    [[ -n "$mark" ]] || return 0
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        [[ "$p" == "$$" || "$p" == "$BASHPID" ]] && continue
        if grep -qzx "PPOOL_CLUSTER_MARK=$mark" "/proc/$p/environ" 2>/dev/null; then
            echo "$p"
        fi
    done
}

# TERM, wait up to ~3 s, then KILL. Arguments: pids.
kill_pids() {
    local pids=() p
    for p in "$@"; do
        [[ "$p" =~ ^[0-9]+$ ]] || continue
        [[ "$p" -gt 1 && "$p" != "$$" ]] || continue
        alive "$p" && pids+=("$p")
    done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        local any=0
        for p in "${pids[@]}"; do alive "$p" && any=1; done
        [[ $any == 0 ]] && return 0
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}
