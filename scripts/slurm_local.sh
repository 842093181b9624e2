#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the tests (Debian 12: SLURM 22.05 from the distribution).
#
#   scripts/slurm_local.sh install   apt-get the packages when missing (root; CI runs it on a fresh machine)
#   scripts/slurm_local.sh up        munged + MariaDB + slurmdbd + slurmctld + slurmd, config and state in
#                                    $PEFTDS_SLURM_DIR (default ${TMPDIR:-/tmp}/peftds-slurm); prints the
#                                    `export SLURM_CONF=...` the clients need
#   scripts/slurm_local.sh down      stops the daemons by their own pids and removes the dir
#   scripts/slurm_local.sh env       prints the export line of a running cluster
#
# The node has the machine's CPUs and two stand-in GPUs (gres without devices, for GPU requests: search.gpu_slots).
# Partitions: `main` (default) and `urgent`, whose jobs preempt `main` jobs with requeue (PreemptMode=REQUEUE;
# the job's --signal, e.g. submitit's USR2, is sent at preemption: preempt_send_user_signal). Short scheduler
# intervals and a 5 s credential expiry, so a requeued job starts again within seconds. Accounting goes to
# slurmdbd on a private MariaDB: submitit polls sacct, and without it a killed job is never seen as failed.
# Any failure prints one line `slurm_local: <why>` and exits 1.
set -euo pipefail

DIR="${PEFTDS_SLURM_DIR:-${TMPDIR:-/tmp}/peftds-slurm}"
PORT="${PEFTDS_SLURM_PORT:-16817}"  # slurmctld; slurmd +1, slurmdbd +2, MariaDB +3
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
CLUSTER=peftds
DB_PASS=peftds-local

fail() {
  echo "slurm_local: $*" >&2
  exit 1
}

log_tail() { # the last meaningful line of a daemon's log (why it did not come up)
  [ -f "$1" ] && grep -v '^\s*$' "$1" | tail -n 1 | cut -c1-200 || echo "no log at $1"
}

wait_for() { # wait_for <seconds> <what> <command...>: poll until the command succeeds
  local deadline=$((SECONDS + $1))
  shift 2
  while [ $SECONDS -lt $deadline ]; do
    if timeout 10 "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.3
  done
  return 1
}

install() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || fail "packages ${missing[*]} are missing and installing them needs root"
  command -v apt-get >/dev/null || fail "packages ${missing[*]} are missing and there is no apt-get (Debian 12 expected)"
  # the packages' own services must not start (we run our own daemons); policy-rc.d 101 = not allowed
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && made_policy=1
  fi
  local out=0
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    >"${TMPDIR:-/tmp}/slurm_local-apt.log" 2>&1 || out=$?
  [ $made_policy = 1 ] && rm -f $policy
  [ $out = 0 ] || fail "apt-get install ${missing[*]} failed: $(log_tail "${TMPDIR:-/tmp}/slurm_local-apt.log")"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() { # stop the daemon whose pid is in $1 (TERM, then KILL after 10 s)
  local f=$1
  pid_alive "$f" || return 0
  local pid
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  [ -d "$DIR" ] || return 0
  # jobs first (their steps are children of slurmd's slurmstepd), then the daemons in reverse order
  if pid_alive "$DIR/run/slurmctld.pid"; then
    SLURM_CONF="$DIR/etc/slurm.conf" timeout 10 scancel --quiet --full --user=root 2>/dev/null || true
  fi
  for d in slurmd slurmctld slurmdbd mariadb munged; do stop_pid "$DIR/run/$d.pid"; done
  rm -rf "$DIR"
}

write_config() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
  cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/run/munge.socket,cred_expire=5
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldParameters=preempt_send_user_signal
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=100000
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
KillWait=5
MinJobAge=600
MessageTimeout=10
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
AccountingStoragePass=$DIR/run/munge.socket
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
MailProg=/bin/true
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES PriorityTier=1 PreemptMode=REQUEUE GraceTime=10 MaxTime=INFINITE State=UP
PartitionName=urgent Nodes=ALL PriorityTier=10 PreemptMode=OFF MaxTime=INFINITE State=UP
EOF
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  : >"$DIR/etc/cgroup.conf"
  # two stand-in GPUs (no device behind them): jobs that ask for GPUs are scheduled and get CUDA_VISIBLE_DEVICES
  printf 'Name=gpu File=/dev/null\nName=gpu File=/dev/zero\n' >"$DIR/etc/gres.conf"
}

start_munge() {
  dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/etc/munge.key"
  munged --force --key-file="$DIR/etc/munge.key" --socket="$DIR/run/munge.socket" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/state/munged.seed" \
    >>"$DIR/log/munged.log" 2>&1 || fail "munged did not start: $(log_tail "$DIR/log/munged.log")"
  wait_for 10 munge munge --socket="$DIR/run/munge.socket" -n ||
    fail "munged does not answer on $DIR/run/munge.socket: $(log_tail "$DIR/log/munged.log")"
}

start_mariadb() {
  mariadb-install-db --no-defaults --datadir="$DIR/state/mysql" --user=root --auth-root-authentication-method=normal \
    --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
    fail "mariadb-install-db failed: $(log_tail "$DIR/log/mariadb-install.log")"
  mariadbd --no-defaults --user=root --datadir="$DIR/state/mysql" --socket="$DIR/run/mysql.sock" \
    --pid-file="$DIR/run/mariadb.pid" --bind-address=127.0.0.1 --port=$((PORT + 3)) --skip-name-resolve \
    --log-error="$DIR/log/mariadb.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
    --innodb-flush-log-at-trx-commit=0 --skip-log-bin >/dev/null 2>&1 &
  wait_for 30 mariadb mariadb --no-defaults --socket="$DIR/run/mysql.sock" -uroot -e "select 1" ||
    fail "MariaDB did not come up: $(log_tail "$DIR/log/mariadb.log")"
  mariadb --no-defaults --socket="$DIR/run/mysql.sock" -uroot -e "
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" >>"$DIR/log/mariadb-install.log" 2>&1 ||
    fail "cannot create the accounting user in MariaDB: $(log_tail "$DIR/log/mariadb-install.log")"
}

up() {
  [ "$(id -u)" = 0 ] || fail "the local cluster needs root (slurmd runs jobs as their users)"
  for b in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$b" >/dev/null || fail "$b not found: run \`scripts/slurm_local.sh install\` (root, Debian 12)"
  done
  if pid_alive "$DIR/run/slurmctld.pid"; then
    fail "a cluster is already running in $DIR (scripts/slurm_local.sh down first)"
  fi
  down
  mkdir -p "$DIR"/{etc,run,log,state/ctld,state/d}
  chmod 700 "$DIR"
  write_config
  export SLURM_CONF="$DIR/etc/slurm.conf"
  start_munge
  start_mariadb
  SLURM_CONF="$SLURM_CONF" slurmdbd >>"$DIR/log/slurmdbd.log" 2>&1 ||
    fail "slurmdbd did not start: $(log_tail "$DIR/log/slurmdbd.log")"
  wait_for 30 slurmdbd sacctmgr -n list cluster ||
    fail "slurmdbd does not answer: $(log_tail "$DIR/log/slurmdbd.log")"
  sacctmgr -i add cluster $CLUSTER >/dev/null 2>&1 || true
  slurmctld >>"$DIR/log/slurmctld.log" 2>&1 || fail "slurmctld did not start: $(log_tail "$DIR/log/slurmctld.log")"
  wait_for 30 slurmctld scontrol ping || fail "slurmctld does not answer: $(log_tail "$DIR/log/slurmctld.log")"
  slurmd >>"$DIR/log/slurmd.log" 2>&1 || fail "slurmd did not start: $(log_tail "$DIR/log/slurmd.log")"
  wait_for 30 "the node" sh -c "sinfo -h -o %T | grep -qx idle" || fail "the node did not become idle: $(sinfo -h -o '%T %E' 2>&1 | head -1)"
  wait_for 30 "a job" srun --quiet -t 1 true || fail "a test job did not run: $(log_tail "$DIR/log/slurmctld.log")"
  echo "export SLURM_CONF=$SLURM_CONF"
}

case "${1:-}" in
install) install ;;
up) up ;;
down) down ;;
env)
  pid_alive "$DIR/run/slurmctld.pid" || fail "no cluster running in $DIR (scripts/slurm_local.sh up)"
  echo "export SLURM_CONF=$DIR/etc/slurm.conf"
  ;;
*)
  echo "usage: $0 install|up|down|env" >&2
  exit 2
  ;;
esac
