#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and CI: munged, slurmctld and slurmd
# as background daemons (no systemd), one partition `debug` on the node `hostname -s`, no
# cgroups, no accounting database (see docs-snippets/cluster-services.md for why).
#
#   bash .ci/services/slurm.sh          # install if missing, configure, start, wait until usable
#   bash .ci/services/slurm.sh start    # same
#   bash .ci/services/slurm.sh status   # exit 0 when the node is idle and a job runs
#   bash .ci/services/slurm.sh stop     # stop the three daemons this script starts
#
# Idempotent: with everything up and the configuration unchanged, `start` only checks and exits 0.
# Needs root (it installs packages and writes /etc/slurm/slurm.conf).
set -euo pipefail

MODE="${1:-start}"
PARTITION="${SLURM_PARTITION:-debug}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
MUNGE_RUN=/run/munge
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID="$MUNGE_RUN/munged.pid"
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
WAIT_S="${SLURM_WAIT_S:-60}"

say() { echo "slurm.sh: $*"; }
die() {
    echo "slurm.sh: ERROR: $*" >&2
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        if [[ -s "$f" ]]; then
            echo "---- last lines of $f" >&2
            tail -n 20 "$f" >&2
        fi
    done
    exit 1
}

[[ "$(id -u)" == 0 ]] || die "run as root (installs packages, writes $CONF, starts daemons)"

# --- pid helpers: only processes whose pid file we wrote, checked by name ----------------------
alive() { # alive PIDFILE NAME -> 0 when the pid in PIDFILE is a running NAME
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(cat "$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
    # A zombie (exited, not yet reaped by PID 1) is not alive.
    [[ "$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}

stop_pid() { # stop_pid PIDFILE NAME
    local pid i
    if ! alive "$1" "$2"; then
        rm -f "$1"
        return 0
    fi
    pid="$(cat "$1")"
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        alive "$1" "$2" || break
        sleep 0.2
    done
    if alive "$1" "$2"; then
        say "$2 (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

node_name() { hostname -s; }

node_state() { sinfo -h -N -n "$(node_name)" -p "$PARTITION" -o '%T' 2>/dev/null | head -n 1; }

# A trivial batch job and a trivial step must both run: that is what "usable" means here.
smoke_test() {
    local out
    out="$(timeout 60 srun -p "$PARTITION" -N1 -n1 -t 1 hostname 2>&1)" \
        || { echo "$out" >&2; return 1; }
    [[ "$out" == "$(node_name)" ]] || { echo "srun printed '$out'" >&2; return 1; }
    timeout 60 sbatch --wait -p "$PARTITION" -t 1 -o /dev/null --wrap true >/dev/null \
        || return 1
}

ready() {
    alive "$MUNGE_PID" munged && alive "$CTLD_PID" slurmctld && alive "$SLURMD_PID" slurmd \
        && [[ "$(node_state)" =~ ^(idle|mixed|allocated)$ ]]
}

do_stop() {
    if alive "$CTLD_PID" slurmctld; then
        # Jobs left running would hold the node; cancel them first, quietly.
        scancel --state=RUNNING,PENDING -p "$PARTITION" 2>/dev/null || true
    fi
    stop_pid "$SLURMD_PID" slurmd
    stop_pid "$CTLD_PID" slurmctld
    stop_pid "$MUNGE_PID" munged
    say "stopped"
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sinfo >/dev/null || missing+=(slurm-client)
    # slurm-wlm is Debian's meta-package for all of the above.
    if ((${#missing[@]})); then
        say "installing slurm-wlm munge (missing: ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
    fi
}

write_config() { # prints "changed" when the file was (re)written
    local node hw tmp
    node="$(node_name)"
    # CPUs, topology and memory as slurmd itself detects them: the node then never drains
    # for "Low RealMemory" or a CPU count mismatch.
    hw="$(slurmd -C | head -n 1)" || die "slurmd -C failed"
    [[ "$hw" == NodeName=* ]] || die "unexpected output from slurmd -C: $hw"
    hw="${hw#NodeName=* }"
    tmp="$(mktemp)"
    cat >"$tmp" <<EOF
# Written by .ci/services/slurm.sh: a one-node test cluster. Edits are overwritten.
ClusterName=mss-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in this container: plain Linux process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct has nothing to read. Finished jobs stay visible to squeue/scontrol for
# MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Short timeouts: a test cluster should fail and recover fast.
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
InactiveLimit=0
KillWait=5
WaitTime=0
UnkillableStepTimeout=30
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=60 DefaultTime=10 State=UP OverSubscribe=NO
EOF
    mkdir -p "$CONF_DIR"
    if [[ -f "$CONF" ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 0
    fi
    install -m 0644 "$tmp" "$CONF"
    rm -f "$tmp"
    echo changed
}

start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN" /var/log/munge /var/lib/munge
    if [[ ! -s "$MUNGE_KEY" ]]; then
        say "creating munge key $MUNGE_KEY"
        if command -v mungekey >/dev/null; then
            runuser -u munge -- mungekey --create --keyfile="$MUNGE_KEY" || die "mungekey failed"
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    if alive "$MUNGE_PID" munged; then
        return 0
    fi
    say "starting munged"
    rm -f "$MUNGE_RUN/munge.socket.2" "$MUNGE_RUN/munge.socket.2.lock"
    runuser -u munge -- munged --pid-file="$MUNGE_PID" || die "munged did not start"
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munge credentials do not round-trip (munge -n | unmunge)"
}

start_slurm_daemons() {
    install -d -o slurm -g slurm -m 0755 "$RUN_DIR" "$LOG_DIR" "$STATE_DIR"
    install -d -o root -g root -m 0755 "$SPOOL_DIR"
    if ! alive "$CTLD_PID" slurmctld; then
        say "starting slurmctld"
        slurmctld || die "slurmctld did not start"
    fi
    if ! alive "$SLURMD_PID" slurmd; then
        say "starting slurmd on $(node_name)"
        slurmd || die "slurmd did not start"
    fi
}

wait_idle() {
    local state="" deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        alive "$CTLD_PID" slurmctld || die "slurmctld exited"
        alive "$SLURMD_PID" slurmd || die "slurmd exited"
        state="$(node_state || true)"
        case "$state" in
            idle | mixed | allocated) return 0 ;;
            down* | drain* | fail*)
                # ReturnToService=2 brings a registered node back; a node marked down by an
                # earlier run (e.g. a reboot of this machine) is resumed explicitly.
                scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true
                ;;
        esac
        sleep 1
    done
    sinfo -N -l >&2 || true
    scontrol show node "$(node_name)" >&2 || true
    die "node $(node_name) not idle after ${WAIT_S}s (state: '${state:-none}')"
}

do_start() {
    install_packages
    local changed
    changed="$(write_config)"
    if [[ -n "$changed" ]]; then
        say "wrote $CONF"
        if alive "$CTLD_PID" slurmctld || alive "$SLURMD_PID" slurmd; then
            say "configuration changed: restarting slurmctld and slurmd"
            stop_pid "$SLURMD_PID" slurmd
            stop_pid "$CTLD_PID" slurmctld
        fi
    elif ready; then
        smoke_test || die "daemons are up and the node is idle, but a trivial job failed"
        say "already running: node $(node_name) $(node_state) in partition $PARTITION"
        return 0
    fi
    start_munge
    start_slurm_daemons
    wait_idle
    smoke_test || die "the node is idle but 'srun hostname' or 'sbatch --wait' failed"
    say "ready: node $(node_name) $(node_state) in partition $PARTITION ($CONF)"
}

case "$MODE" in
    start) do_start ;;
    stop) do_stop ;;
    status)
        ready || { say "not running"; exit 1; }
        smoke_test || die "daemons up but a trivial job failed"
        say "running: node $(node_name) $(node_state) in partition $PARTITION"
        ;;
    *)
        echo "usage: $0 [start|stop|status]" >&2
        exit 2
        ;;
esac
