#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost, for development and tests.
#
#   scripts/local-slurm.sh up       start munged (if needed), slurmctld and slurmd; wait until idle
#   scripts/local-slurm.sh down     cancel its jobs, stop the daemons it started, remove its folder
#   scripts/local-slurm.sh conf     print the path of its slurm.conf (export SLURM_CONF=$(... conf))
#   scripts/local-slurm.sh status   print sinfo/squeue; exit 1 when the cluster is not up
#   scripts/local-slurm.sh set MaxArraySize=N   change a limit in slurm.conf and restart slurmctld
#                                   with its saved state (queued jobs are kept; `scontrol
#                                   reconfigure` shows the new value but does not apply it)
#
# Uses Debian's slurm-wlm (slurmctld, slurmd, slurm-client) and munge, which must be installed
# (scripts/test.sh installs them when run as root). Runs as root (SlurmUser=root). Everything it
# writes (slurm.conf, state, spool, logs, pid files, the jobcomp file) lives in one folder it
# owns: $ECOCUBE_SLURM_DIR, default ${TMPDIR:-/tmp}/ecocube-slurm-<uid>. The daemons listen on
# free ports of the machine chosen at `up`. Every command is idempotent and every wait bounded
# ($ECOCUBE_SLURM_WAIT seconds, default 30). The controller's MaxArraySize is Slurm's default, 1001,
# so that campaigns larger than one array are split here as on a real cluster; set
# $ECOCUBE_SLURM_MAX_ARRAY_SIZE at `up`, or `set MaxArraySize=N` on a running cluster, to change it.
set -euo pipefail

DIR=${ECOCUBE_SLURM_DIR:-${TMPDIR:-/tmp}/ecocube-slurm-$(id -u)}
CONF="$DIR/slurm.conf"
WAIT=${ECOCUBE_SLURM_WAIT:-30}
MAX_ARRAY_SIZE=${ECOCUBE_SLURM_MAX_ARRAY_SIZE:-1001}
export SLURM_CONF="$CONF"

die() { echo "local-slurm: $*" >&2; exit 1; }
log() { echo "local-slurm: $*" >&2; }

pid_alive() {  # pid_alive PIDFILE
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

munge_ok() {
  command -v munge >/dev/null 2>&1 && munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

slurm_up() {  # daemons alive and the node answers
  pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" &&
    [ -n "$(timeout 10 sinfo -h -N -n localhost -o %T 2>/dev/null)" ]
}

port_free() {  # port_free PORT -> 0 when nothing listens on 127.0.0.1:PORT / *:PORT
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {  # a free port in 20000-50000, and port+1 free too (slurmd) when asked
  local tries=0 p
  while [ $tries -lt 200 ]; do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 30000 ))
    if port_free "$p" && { [ "${1:-}" != pair ] || port_free $((p + 1)); }; then
      echo "$p"; return 0
    fi
    tries=$((tries + 1))
  done
  die "no free TCP port found"
}

wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      return 1
    fi
    sleep 0.3
  done
}

need() {
  local missing=()
  for exe in slurmctld slurmd munged; do
    command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || missing+=("$exe")
  done
  for exe in sbatch sinfo squeue scontrol scancel munge unmunge; do
    command -v "$exe" >/dev/null 2>&1 || missing+=("$exe")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing programs: ${missing[*]} (apt-get install slurmctld slurmd slurm-client munge)"
  [ "$(id -u)" = 0 ] || die "must run as root (SlurmUser=root, munged runs as user munge)"
}

write_conf() {
  case "$MAX_ARRAY_SIZE" in ''|*[!0-9]*) die "ECOCUBE_SLURM_MAX_ARRAY_SIZE must be a number, got '$MAX_ARRAY_SIZE'" ;; esac
  local cpus mem_mb port
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
  port=$(pick_port pair)
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
  chmod 700 "$DIR"
  cat >"$CONF.part" <<EOF
# written by scripts/local-slurm.sh: a single-node cluster for development and tests
ClusterName=ecocube-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
DependencyParameters=kill_invalid_depend
ReturnToService=2
MailProg=/bin/true
MinJobAge=600
MaxArraySize=$MAX_ARRAY_SIZE
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.part" "$CONF"
}

daemon() {  # daemon CMD...: start a daemon without the descriptors this script inherited
  # (a caller's `flock LOCK scripts/local-slurm.sh up` lock fd would stay held by the daemon
  # for its whole life, and every other flock on LOCK would wait forever)
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      case $fd in 0|1|2|255) ;; *) eval "exec $fd>&-" 2>/dev/null || true ;; esac
    done
    exec "$@"
  )
}

start_munge() {
  if munge_ok; then
    return 0
  fi
  mkdir -p /run/munge
  chown munge:munge /run/munge 2>/dev/null || true
  chmod 755 /run/munge
  # a stale socket/pid from a killed munged makes it refuse to start
  if [ -S /run/munge/munge.socket.2 ] && ! munge_ok; then
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  fi
  daemon runuser -u munge -- /usr/sbin/munged
  touch "$DIR/run/munged.started-by-us"
  wait_until "$WAIT" munged munge_ok || die "munged did not start within ${WAIT}s"
}

cmd_up() {
  need
  if [ -f "$CONF" ] && slurm_up; then
    log "already up ($CONF)"
    return 0
  fi
  # leftovers of a half-started or killed cluster: stop them, then start fresh
  stop_daemons
  mkdir -p "$DIR/run"
  write_conf
  start_munge
  daemon /usr/sbin/slurmctld -i -f "$CONF"
  daemon /usr/sbin/slurmd -N localhost -f "$CONF"
  node_idle() { [ "$(timeout 10 sinfo -h -N -n localhost -o %T 2>/dev/null)" = idle ]; }
  if ! wait_until "$WAIT" "node idle" node_idle; then
    log "the node is not idle after ${WAIT}s; sinfo says: $(sinfo -h -N -o '%N %T %E' 2>&1 || true)"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
  fi
  log "up: $CONF"
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until "$WAIT" "$2 to stop" bash -c "! kill -0 $pid 2>/dev/null"; then
      log "$2 (pid $pid) ignored TERM for ${WAIT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

stop_daemons() {
  if [ -f "$CONF" ] && pid_alive "$DIR/run/slurmctld.pid"; then
    timeout 10 scancel --full --quiet --partition=debug 2>/dev/null || true
    # give the daemons a moment to kill the jobs' processes (bounded)
    wait_until 10 "jobs to end" bash -c '[ -z "$(squeue -h -t running,completing 2>/dev/null)" ]' || true
  fi
  stop_pidfile "$DIR/run/slurmd.pid" slurmd
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
}

cmd_down() {
  if [ ! -d "$DIR" ]; then
    log "not up (no $DIR)"
    return 0
  fi
  stop_daemons
  if [ -f "$DIR/run/munged.started-by-us" ] && [ -s /run/munge/munged.pid ]; then
    stop_pidfile /run/munge/munged.pid munged
  fi
  rm -rf "$DIR"
  log "down"
}

cmd_set() {  # cmd_set KEY=VALUE: only the limits tests and benchmarks change
  local kv=${1:-} key value
  key=${kv%%=*}; value=${kv#*=}
  case "$key" in MaxArraySize|MaxJobCount) ;; *) die "set: only MaxArraySize=N or MaxJobCount=N, got '$kv'" ;; esac
  case "$value" in ''|*[!0-9]*) die "set: $key needs a number, got '$value'" ;; esac
  [ -f "$CONF" ] && slurm_up || die "not up: run '$0 up' first"
  if grep -q "^$key=" "$CONF"; then
    sed -i "s/^$key=.*/$key=$value/" "$CONF"
  else
    sed -i "s/^KillWait=/$key=$value\nKillWait=/" "$CONF"
  fi
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
  daemon /usr/sbin/slurmctld -f "$CONF"   # recovers the saved state: jobs stay queued
  # read the whole answer before matching: under pipefail, `scontrol | grep -q` fails with
  # SIGPIPE (141) whenever grep stops reading before scontrol has written everything
  ctld_answers() {
    local config
    config=$(timeout 10 scontrol show config 2>/dev/null) || return 1
    grep -q "^$key *= *$value\$" <<<"$config"
  }
  wait_until "$WAIT" "slurmctld with $key=$value" ctld_answers || die "slurmctld did not come back with $key=$value"
  node_ok() { [ -n "$(timeout 10 sinfo -h -N -n localhost -o %T 2>/dev/null)" ]; }
  wait_until "$WAIT" "node" node_ok || die "the node does not answer after the restart"
  log "$key=$value"
}

cmd_status() {
  if [ -f "$CONF" ] && slurm_up; then
    echo "conf: $CONF"
    sinfo -N -o '%N %T %c %m'
    squeue
  else
    echo "local-slurm: not up" >&2
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  conf) echo "$CONF" ;;
  status) cmd_status ;;
  set) cmd_set "${2:-}" ;;
  *) echo "usage: $0 up|down|conf|status|set KEY=N" >&2; exit 2 ;;
esac
