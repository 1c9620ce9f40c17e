#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and CI: munged, a private MariaDB,
# slurmdbd, slurmctld and slurmd as background daemons (no systemd), one partition `debug` on
# the node `hostname -s`, no cgroups. Accounting through slurmdbd is on, so `sacct` works and
# submitit sees real job states (docs-snippets/cluster-services.md says why that matters).
#
#   bash .ci/services/slurm.sh          # install if missing, configure, start, wait until usable
#   bash .ci/services/slurm.sh start    # same
#   bash .ci/services/slurm.sh status   # exit 0 when the node is idle and a job runs
#   bash .ci/services/slurm.sh stop     # stop the daemons this script starts
#
# Idempotent: with everything up and the configuration unchanged, `start` only checks and exits 0.
# Needs root (it installs packages and writes /etc/slurm/*.conf). Loopback addresses only.
set -euo pipefail

MODE="${1:-start}"
PARTITION="${MSS_SLURM_PARTITION:-debug}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
DBD_CONF="$CONF_DIR/slurmdbd.conf"
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
MUNGE_RUN=/run/munge
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID="$MUNGE_RUN/munged.pid"
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
DBD_PID="$RUN_DIR/slurmdbd.pid"
DBD_PORT=6819
# MariaDB for slurmdbd: its own data directory, socket, pid file and loopback port, apart from
# any system MariaDB on the machine (owned by the mysql user, which cannot write slurm's dirs).
DB_DIR=/var/lib/slurm/mariadb
DB_RUN=/run/mss-mariadb
DB_SOCK="$DB_RUN/mariadb.sock"
DB_PID="$DB_RUN/mariadb.pid"
DB_LOG="$DB_DIR/mariadb.err"
DB_PORT=6820
DB_PASS=slurmdb-test-only
WAIT_S="${SLURM_WAIT_S:-60}"

say() { echo "slurm.sh: $*"; }
die() {
    echo "slurm.sh: ERROR: $*" >&2
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmdbd.log" \
        "$DB_LOG" /var/log/munge/munged.log; do
        if [[ -s "$f" ]]; then
            echo "---- last lines of $f" >&2
            tail -n 8 "$f" >&2
        fi
    done
    exit 1
}

[[ "$(id -u)" == 0 ]] || die "run as root (installs packages, writes $CONF, starts daemons)"

# --- pid helpers: only processes whose pid file we wrote, checked by name ----------------------
alive() { # alive PIDFILE NAME -> 0 when the pid in PIDFILE is a running NAME
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 1 # may vanish between checks while a daemon starts
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
    # A zombie (exited, not yet reaped by PID 1) is not alive.
    [[ "$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}

stop_pid() { # stop_pid PIDFILE NAME
    local pid
    if ! alive "$1" "$2"; then
        rm -f "$1"
        return 0
    fi
    pid="$(cat "$1")"
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        alive "$1" "$2" || break
        sleep 0.2
    done
    if alive "$1" "$2"; then
        say "$2 (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

wait_pid() { # wait_pid PIDFILE NAME: a daemon that forked writes its pid file a moment later
    for _ in $(seq 1 50); do
        alive "$1" "$2" && return 0
        sleep 0.2
    done
    die "$2 did not stay up (no live pid in $1 after 10 s)"
}

node_name() { hostname -s; }

node_state() { sinfo -h -N -n "$(node_name)" -p "$PARTITION" -o '%T' 2>/dev/null | head -n 1; }

# A trivial step, a trivial batch job, and its record in accounting: that is "usable" here.
smoke_test() {
    local out jobid
    out="$(timeout 60 srun -p "$PARTITION" -N1 -n1 -t 1 hostname 2>&1)" \
        || { echo "$out" >&2; return 1; }
    [[ "$out" == "$(node_name)" ]] || { echo "srun printed '$out'" >&2; return 1; }
    out="$(timeout 60 sbatch --parsable --wait -p "$PARTITION" -t 1 -o /dev/null --wrap true)" \
        || return 1
    jobid="${out%%;*}"
    for _ in $(seq 1 20); do
        out="$(sacct -n -X -P -o State -j "$jobid" 2>&1)" || true
        [[ "$out" == COMPLETED ]] && return 0
        sleep 0.5
    done
    echo "sacct does not report job $jobid COMPLETED: '$out'" >&2
    return 1
}

ready() {
    alive "$MUNGE_PID" munged && alive "$DB_PID" mariadbd && alive "$DBD_PID" slurmdbd \
        && alive "$CTLD_PID" slurmctld && alive "$SLURMD_PID" slurmd \
        && [[ "$(node_state)" =~ ^(idle|mixed|allocated)$ ]]
}

do_stop() {
    if alive "$CTLD_PID" slurmctld; then
        # Jobs left running would hold the node; cancel them first, quietly.
        scancel --state=RUNNING,PENDING -p "$PARTITION" 2>/dev/null || true
    fi
    stop_pid "$SLURMD_PID" slurmd
    stop_pid "$CTLD_PID" slurmctld
    stop_pid "$DBD_PID" slurmdbd
    stop_pid "$DB_PID" mariadbd
    stop_pid "$MUNGE_PID" munged
    say "stopped"
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sinfo >/dev/null || missing+=(slurm-client)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    # slurm-wlm is Debian's meta-package for slurmctld, slurmd and the client commands.
    if ((${#missing[@]})); then
        say "installing slurm-wlm slurmdbd munge mariadb-server (missing: ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null \
            || die "apt-get install slurm-wlm slurmdbd munge mariadb-server failed"
    fi
}

write_config() { # prints "changed" when a file was (re)written
    local node hw tmp changed="" addr
    node="$(node_name)"
    # The daemons bind to the address the node name resolves to (NoInAddrAny): it must be
    # loopback, so that nothing of this test cluster listens beyond the machine.
    addr="$(getent ahostsv4 "$node" | awk 'NR == 1 {print $1}')"
    [[ "$addr" == 127.* ]] \
        || die "node name $node resolves to '${addr:-nothing}', not a loopback address; add '127.0.0.1 $node' to /etc/hosts"
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
# Accounting through slurmdbd, as on a production cluster: sacct (and so submitit) sees states.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
MinJobAge=300
# Bind to the address the node name resolves to (127.0.0.1 here), not to every interface.
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
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
    if ! { [[ -f "$CONF" ]] && cmp -s "$tmp" "$CONF"; }; then
        install -m 0644 "$tmp" "$CONF"
        changed=yes
    fi
    cat >"$tmp" <<EOF
# Written by .ci/services/slurm.sh: accounting for the one-node test cluster.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
CommunicationParameters=NoInAddrAny
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    if ! { [[ -f "$DBD_CONF" ]] && cmp -s "$tmp" "$DBD_CONF"; }; then
        # slurmdbd refuses a config readable by others (it holds the database password).
        install -o slurm -g slurm -m 0600 "$tmp" "$DBD_CONF"
        changed=yes
    fi
    rm -f "$tmp"
    if [[ -n "$changed" ]]; then echo changed; fi
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
    wait_pid "$MUNGE_PID" munged
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munge credentials do not round-trip (munge -n | unmunge)"
}

db() { mariadb --protocol=socket --socket="$DB_SOCK" -u root "$@"; }

start_mariadb() {
    install -d -o mysql -g mysql -m 0750 "$DB_DIR"
    install -d -o mysql -g mysql -m 0755 "$DB_RUN"
    if [[ ! -d "$DB_DIR/mysql" ]]; then
        say "initialising MariaDB data directory $DB_DIR"
        mariadb-install-db --user=mysql --datadir="$DB_DIR" --auth-root-authentication-method=socket \
            --skip-test-db >"$LOG_DIR/mariadb-install.log" 2>&1 \
            || { cat "$LOG_DIR/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    if ! alive "$DB_PID" mariadbd; then
        say "starting MariaDB on 127.0.0.1:$DB_PORT"
        rm -f "$DB_SOCK"
        setsid mariadbd --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCK" --pid-file="$DB_PID" \
            --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
            --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
            --log-error="$DB_LOG" </dev/null >/dev/null 2>&1 &
        wait_pid "$DB_PID" mariadbd
        for _ in $(seq 1 60); do
            db -e 'SELECT 1' >/dev/null 2>&1 && break
            sleep 0.5
        done
        db -e 'SELECT 1' >/dev/null 2>&1 || die "MariaDB did not answer on $DB_SOCK within 30 s"
    fi
    db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "could not create the slurm database"
}

start_slurmdbd() {
    if alive "$DBD_PID" slurmdbd; then
        return 0
    fi
    say "starting slurmdbd on 127.0.0.1:$DBD_PORT"
    slurmdbd || die "slurmdbd did not start"
    wait_pid "$DBD_PID" slurmdbd
    for _ in $(seq 1 60); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$DBD_PORT") 2>/dev/null; then return 0; fi
        alive "$DBD_PID" slurmdbd || die "slurmdbd exited"
        sleep 0.5
    done
    die "slurmdbd does not listen on 127.0.0.1:$DBD_PORT after 30 s"
}

start_slurm_daemons() {
    install -d -o slurm -g slurm -m 0755 "$STATE_DIR"
    install -d -o root -g root -m 0755 "$SPOOL_DIR"
    if ! alive "$CTLD_PID" slurmctld; then
        say "starting slurmctld"
        slurmctld || die "slurmctld did not start"
        wait_pid "$CTLD_PID" slurmctld
    fi
    if ! alive "$SLURMD_PID" slurmd; then
        say "starting slurmd on $(node_name)"
        slurmd || die "slurmd did not start"
        wait_pid "$SLURMD_PID" slurmd
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
    install -d -o slurm -g slurm -m 0755 "$RUN_DIR" "$LOG_DIR"
    local changed
    changed="$(write_config)"
    if [[ -n "$changed" ]]; then
        say "wrote $CONF and $DBD_CONF"
        if alive "$CTLD_PID" slurmctld || alive "$SLURMD_PID" slurmd || alive "$DBD_PID" slurmdbd; then
            say "configuration changed: restarting slurmdbd, slurmctld and slurmd"
            stop_pid "$SLURMD_PID" slurmd
            stop_pid "$CTLD_PID" slurmctld
            stop_pid "$DBD_PID" slurmdbd
        fi
    elif ready; then
        smoke_test || die "daemons are up and the node is idle, but a trivial job failed"
        say "already running: node $(node_name) $(node_state) in partition $PARTITION"
        return 0
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm_daemons
    wait_idle
    smoke_test || die "the node is idle but 'srun hostname', 'sbatch --wait' or sacct failed"
    say "ready: node $(node_name) $(node_state) in partition $PARTITION, accounting on ($CONF)"
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
