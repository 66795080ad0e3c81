#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for tests and CI (Debian 12, as root, no systemd).
#
#   bash slurm/dev-cluster.sh install   # apt-get slurmctld slurmd slurm-client munge slurmdbd mariadb-server
#   bash slurm/dev-cluster.sh start     # munged, mariadb, slurmdbd, slurmctld, slurmd; waits for a job to run
#   bash slurm/dev-cluster.sh status    # which daemons run, and sinfo
#   bash slurm/dev-cluster.sh stop      # stops the daemons by their pid files
#
# Every subcommand is idempotent: `start` on a running cluster checks it and returns. The cluster is
# named `dev` (profile slurm/dev.yaml) with one partition `debug`; the node advertises DEV_CPUS CPUs
# (default 16) whatever the box has, so tiny jobs overlap. Config is written from slurm/dev/*.in.
# Logs: /var/log/slurm-dev/. Daemons are started directly: policy-rc.d blocks service starts at install,
# and PID 1 is not systemd.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN=/run/slurm-dev
LOG=/var/log/slurm-dev
STATE=/var/lib/slurm-dev
CONF=/etc/slurm
CPUS="${DEV_CPUS:-16}"
DB_PASS=slurm-dev-only
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
MYSQL_PID=/run/mysqld/mysqld.pid
MUNGE_PID=/run/munge/munged.pid

say() { echo "dev-cluster: $*"; }
die() { echo "dev-cluster: error: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"; }

# alive PIDFILE NAME: the pid in PIDFILE is a running process whose command is NAME.
alive() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$2" ]
}

# wait_for SECONDS WHAT COMMAND...: retry COMMAND every 0.5 s until it succeeds or time runs out.
wait_for() {
    local limit=$(( $1 * 2 )) what="$2" i
    shift 2
    for (( i = 0; i < limit; i++ )); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}

fail_log() {  # fail_log MESSAGE LOGFILE
    echo "dev-cluster: error: $1" >&2
    if [ -f "$2" ]; then echo "--- last lines of $2:" >&2; tail -n 20 "$2" >&2; fi
    exit 1
}

cmd_install() {
    need_root
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} = 0 ]; then say "packages already installed"; return 0; fi
    say "installing ${missing[*]}"
    local logfile=/tmp/dev-cluster-apt.log
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >"$logfile" 2>&1; then
        apt-get -o DPkg::Lock::Timeout=300 update -qq >>"$logfile" 2>&1 || true
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >>"$logfile" 2>&1 \
            || fail_log "apt-get install ${missing[*]} failed" "$logfile"
    fi
    say "installed"
}

# render TEMPLATE: the template with @NAME@ placeholders filled in, on stdout.
render() {
    local host mem_mb real_cpus
    host="$(hostname -s)"
    real_cpus="$(nproc)"
    mem_mb="$(free -m | awk '/^Mem:/ {print $2}')"
    mem_mb=$(( mem_mb * 95 / 100 ))  # a little below what the box has, or slurmd drains the node
    sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$CPUS|g" -e "s|@REAL_CPUS@|$real_cpus|g" -e "s|@MEM_MB@|$mem_mb|g" \
        -e "s|@RUN@|$RUN|g" -e "s|@LOG@|$LOG|g" -e "s|@STATE@|$STATE|g" -e "s|@DB_PASS@|$DB_PASS|g" "$1"
}

# write_config: render the templates; returns 0 if the files changed, 1 if they were already so.
write_config() {
    local changed=1 name tmp
    mkdir -p "$CONF"
    for name in slurm.conf slurmdbd.conf; do
        tmp="$(mktemp "$CONF/.$name.XXXXXX")"
        render "$HERE/dev/$name.in" >"$tmp"
        if [ -f "$CONF/$name" ] && cmp -s "$tmp" "$CONF/$name"; then
            rm -f "$tmp"
        else
            chmod 644 "$tmp"
            mv -f "$tmp" "$CONF/$name"
            changed=0
        fi
    done
    chmod 600 "$CONF/slurmdbd.conf"  # slurmdbd refuses a config others can read
    return $changed
}

start_munge() {
    if alive "$MUNGE_PID" munged; then return 0; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create >/dev/null
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged || fail_log "munged did not start" /var/log/munge/munged.log
    wait_for 10 munge bash -c 'munge -n | unmunge' || fail_log "munge does not answer" /var/log/munge/munged.log
}

start_mariadb() {
    if ! alive "$MYSQL_PID" mariadbd; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        if [ ! -d /var/lib/mysql/mysql ]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG/mariadb-install.log" 2>&1 \
                || fail_log "mariadb-install-db failed" "$LOG/mariadb-install.log"
        fi
        setsid -f /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file="$MYSQL_PID" \
            --socket=/run/mysqld/mysqld.sock --log-error="$LOG/mariadb.log" </dev/null >/dev/null 2>&1
    fi
    wait_for 60 mariadb mariadb-admin --socket=/run/mysqld/mysqld.sock ping || fail_log "mariadb did not start" "$LOG/mariadb.log"
    mariadb --socket=/run/mysqld/mysqld.sock -e "
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
        || die "could not create the accounting database in mariadb"
}

start_slurmdbd() {
    if ! alive "$RUN/slurmdbd.pid" slurmdbd; then
        /usr/sbin/slurmdbd || fail_log "slurmdbd did not start" "$LOG/slurmdbd.log"
    fi
    wait_for 60 slurmdbd sacctmgr -n list cluster || fail_log "slurmdbd does not answer" "$LOG/slurmdbd.log"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx dev; then
        sacctmgr -i add cluster dev >/dev/null || die "sacctmgr could not add cluster dev"
    fi
}

start_slurmctld() {
    if ! alive "$RUN/slurmctld.pid" slurmctld; then
        /usr/sbin/slurmctld || fail_log "slurmctld did not start" "$LOG/slurmctld.log"
    fi
    wait_for 60 slurmctld scontrol ping || fail_log "slurmctld does not answer" "$LOG/slurmctld.log"
}

start_slurmd() {
    if ! alive "$RUN/slurmd.pid" slurmd; then
        /usr/sbin/slurmd || fail_log "slurmd did not start" "$LOG/slurmd.log"
    fi
}

node_state() { sinfo -h -N -p debug -o '%T' 2>/dev/null | head -n 1; }

wait_idle() {
    local i state
    for (( i = 0; i < 120; i++ )); do
        state="$(node_state)"
        case "$state" in
            idle|mixed|allocated) return 0 ;;
            down*|drain*|fail*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    fail_log "the node is '${state:-unknown}', not idle, after 60 s" "$LOG/slurmd.log"
}

smoke_test() {
    local out id state i
    out="$(timeout 60 srun --quiet -p debug -n 1 -t 1 --mem=64 echo dev-cluster-ok 2>&1)" \
        || die "srun failed: $out"
    [ "$out" = dev-cluster-ok ] || die "srun printed '$out', expected dev-cluster-ok"
    id="$(sbatch --parsable -p debug -t 1 --mem=64 -o /dev/null --wrap true)" || die "sbatch --wrap failed"
    for (( i = 0; i < 120; i++ )); do
        state="$(sacct -n -X -P -j "$id" -o State 2>/dev/null | head -n 1)"
        [ "$state" = COMPLETED ] && return 0
        case "$state" in FAILED*|CANCELLED*|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) die "test job $id ended $state";; esac
        sleep 0.5
    done
    die "test job $id did not show COMPLETED in sacct within 60 s (state '${state:-none}')"
}

cmd_start() {
    need_root
    command -v slurmctld >/dev/null || die "SLURM is not installed: run 'bash $0 install' first"
    mkdir -p "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd"
    if write_config && { alive "$RUN/slurmctld.pid" slurmctld || alive "$RUN/slurmd.pid" slurmd \
                         || alive "$RUN/slurmdbd.pid" slurmdbd; }; then
        say "configuration changed: restarting the SLURM daemons"
        stop_slurm
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_idle
    smoke_test
    say "cluster dev is up: partition debug, $CPUS CPUs on $(hostname -s) (logs in $LOG)"
}

# stop_pid PIDFILE NAME: SIGTERM the daemon, wait up to 20 s, then SIGKILL it.
stop_pid() {
    local pid i
    alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid="$(cat "$1")"
    kill "$pid" 2>/dev/null || true
    for (( i = 0; i < 40; i++ )); do
        [ -d "/proc/$pid" ] || { rm -f "$1"; return 0; }
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}

stop_slurm() {
    stop_pid "$RUN/slurmd.pid" slurmd
    stop_pid "$RUN/slurmctld.pid" slurmctld
    stop_pid "$RUN/slurmdbd.pid" slurmdbd
}

cmd_stop() {
    need_root
    stop_slurm
    stop_pid "$MYSQL_PID" mariadbd
    stop_pid "$MUNGE_PID" munged
    say "stopped"
}

cmd_status() {
    local rc=0 pair
    for pair in "$MUNGE_PID:munged" "$MYSQL_PID:mariadbd" "$RUN/slurmdbd.pid:slurmdbd" \
                "$RUN/slurmctld.pid:slurmctld" "$RUN/slurmd.pid:slurmd"; do
        if alive "${pair%%:*}" "${pair##*:}"; then
            echo "${pair##*:}: running (pid $(cat "${pair%%:*}"))"
        else
            echo "${pair##*:}: stopped"; rc=1
        fi
    done
    if [ $rc = 0 ]; then sinfo; fi
    return $rc
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: bash $0 install|start|stop|status" >&2; exit 2 ;;
esac
