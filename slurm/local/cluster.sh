#!/usr/bin/env bash
# A throw-away single-node Slurm cluster on this machine, for lightning_seq's
# test suite and CI. NOT for real clusters: everything runs as root, with no
# cgroups and no accounting database.
#
# Usage (as root):
#   bash slurm/local/cluster.sh install  # apt-get slurmctld slurmd slurm-client munge if missing
#   bash slurm/local/cluster.sh start    # start munged, slurmctld, slurmd; wait for the node to be idle
#   bash slurm/local/cluster.sh status   # exit 0 and one line when all three daemons are alive
#   bash slurm/local/cluster.sh stop     # cancel our jobs, stop our three daemons
#
# Everything (slurm.conf, munge key and socket, spool, logs, pid files) lives in
# one state dir, ${LIGHTNING_SEQ_SLURM_DIR:-/tmp/lightning_seq_slurm}. Nothing is
# exported globally: `start` prints (as its only stdout) and writes to
# <state dir>/env the line `export SLURM_CONF=<state dir>/slurm.conf`, e.g.
#   eval "$(bash slurm/local/cluster.sh start)"   or   source <state dir>/env
#
# Facts: Debian 12 ships Slurm 22.05 (install takes ~7 s); apt does not start
# services here (policy-rc.d), so we start the daemons ourselves, each with its
# pid file in the state dir, and `stop` kills only those pids (never by name).
# The node is `hostname -s` at 127.0.0.1 with ${LIGHTNING_SEQ_SLURM_CPUS:-2}
# CPUs (may exceed the real cores), partition `debug`, ports 16817/16818 (no
# clash with a system Slurm). cred_expire=10 and bf_interval=1,sched_interval=2
# make a requeued job restart ~12 s after `scontrol requeue` instead of ~150 s.
# `--signal=USR1@N` goes to the srun tasks only (`B:USR1@N`: the batch shell
# only); slurmctld checks every 30 s and signals once <= N+30 s remain, so it
# comes 0-30 s earlier than asked (--time=1 --signal=USR1@30: 0-30 s after
# the start). MinJobAge=30: a finished job leaves scontrol/squeue ~30 s after
# it ends; `sbatch --wait` returns the final exit code (after requeues), and
# <state dir>/log/jobcomp.txt keeps a "JobId=... JobState=..." line per finished
# job. No sacct (no slurmdbd). Config template: slurm/local/slurm.conf.in.
set -euo pipefail

DIR=${LIGHTNING_SEQ_SLURM_DIR:-/tmp/lightning_seq_slurm}
CPUS=${LIGHTNING_SEQ_SLURM_CPUS:-2}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=$DIR/slurm.conf
DAEMONS=(munged slurmctld slurmd)
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "cluster.sh: $*" >&2; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }
need_root() { [[ $(id -u) == 0 ]] || die "'$1' must run as root (try: sudo bash $0 $1)"; }

# pid of daemon $1 from its pid file, if that process is alive (a zombie is dead).
pid_of() {
  local f=$DIR/$1.pid pid stat
  pid=$(cat "$f" 2>/dev/null) && [[ -n $pid ]] || return 1  # daemons delete it on exit
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $stat == "$pid ($1) "* ]] || return 1  # a stale pid file, pid reused
  stat=${stat##*) }  # the field after "(comm) " is the state
  [[ ${stat:0:1} != Z ]] || return 1
  echo "$pid"
}

tails() {
  for log in "$DIR"/log/*.log; do
    [[ -e $log ]] && { echo "---- tail $log"; tail -n 15 "$log"; }
  done >&2
}

# Show the logs, stop what did start, fail.
start_failed() { tails; cmd_stop >/dev/null 2>&1 || true; die "$@"; }

installed() { command -v munged && command -v slurmctld && command -v slurmd && command -v sinfo; } >/dev/null

cmd_install() {
  if installed; then say "Slurm and munge already installed ($(slurmd -V))"; return; fi
  need_root install
  local log=/tmp/lightning_seq_slurm_apt.log
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$log" 2>&1 ||
    { apt-get update -qq >>"$log" 2>&1 &&
      apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$log" 2>&1; } ||
    { tail -n 20 "$log" >&2; die "apt-get install failed, see $log"; }
  installed || die "packages installed but daemons not found, see $log"
  say "installed $(slurmd -V)"
}

cmd_status() {
  local pid line="" down=""
  for d in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$d"); then line+=" $d=$pid"; else down+=" $d"; fi
  done
  if [[ -z $down ]]; then echo "slurm cluster running:$line SLURM_CONF=$CONF"; return 0; fi
  echo "slurm cluster not running (down:$down) in $DIR"
  return 1
}

cmd_start() {
  need_root start
  installed || die "Slurm/munge not installed; run: bash $0 install"
  if cmd_status >/dev/null; then
    say "already running in $DIR"; echo "export SLURM_CONF=$CONF"; return
  fi
  cmd_stop  # a partly running cluster: clean up before starting again
  mkdir -p "$DIR"/{munge,log,spool/ctld,spool/d}
  chmod 755 "$DIR" "$DIR/munge"  # munged refuses group/other-writable dirs
  local key=$DIR/munge/munge.key host
  if [[ ! -s $key ]]; then
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
  fi
  chown root:root "$key"; chmod 400 "$key"
  host=$(hostname -s)
  sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$CPUS|g" -e "s|@DIR@|$DIR|g" \
    "$HERE/slurm.conf.in" >"$CONF"
  echo "export SLURM_CONF=$CONF" >"$DIR/env"
  export SLURM_CONF=$CONF

  munged --key-file="$key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" ||
    start_failed "munged failed to start, see $DIR/log/munged.log"
  # -c: start with no jobs from an earlier run of the cluster.
  slurmctld -c -f "$CONF" || start_failed "slurmctld failed (messages above), see $DIR/log/slurmctld.log"
  slurmd -f "$CONF" || start_failed "slurmd failed (messages above), see $DIR/log/slurmd.log"

  local t0=$SECONDS state=""
  while (( SECONDS - t0 < 30 )); do
    state=$(timeout 5 sinfo -h -N -n "$host" -o %T 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.5
  done
  [[ $state == idle ]] ||
    start_failed "node $host not idle after 30 s (state: '${state:-none}'); logs in $DIR/log/"
  say "node $host idle after $((SECONDS - t0)) s; $(cmd_status)"
  echo "export SLURM_CONF=$CONF"
}

cmd_stop() {
  need_root stop
  local pid d i
  if pid_of slurmctld >/dev/null && [[ -e $CONF ]]; then
    # Cancel our jobs so that no job processes outlive slurmd.
    local jobs; mapfile -t jobs < <(SLURM_CONF=$CONF timeout 5 squeue -h -o %i 2>/dev/null || true)
    if (( ${#jobs[@]} )); then
      say "cancelling jobs: ${jobs[*]}"
      SLURM_CONF=$CONF scancel "${jobs[@]}" 2>/dev/null || true
      for ((i = 0; i < 30; i++)); do
        [[ -z $(SLURM_CONF=$CONF timeout 5 squeue -h -t R,CG -o %i 2>/dev/null) ]] && break
        sleep 0.5
      done
    fi
  fi
  for d in slurmd slurmctld munged; do
    pid=$(pid_of "$d") || { rm -f "$DIR/$d.pid"; continue; }
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do pid_of "$d" >/dev/null || break; sleep 0.25; done
    if pid_of "$d" >/dev/null; then
      say "$d ($pid) ignored SIGTERM for 10 s, sending SIGKILL"; kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$d.pid"
    say "stopped $d ($pid)"
  done
}

case ${1:-} in
  install|start|stop|status) "cmd_$1" ;;
  *) die "usage: bash $0 {install|start|stop|status}" ;;
esac
