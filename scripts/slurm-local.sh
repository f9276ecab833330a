#!/usr/bin/env bash
# A single-host Slurm cluster for the cluster tests: munged, slurmctld and two slurmd
# "nodes" (n1, n2: one CPU and one fake GPU each) on this machine, everything (config,
# state, spool, logs, munge socket) under one directory and stopped by the pids it saved.
#
#   scripts/slurm-local.sh install        # apt-get install slurm-wlm munge (Debian/Ubuntu, as root)
#   scripts/slurm-local.sh start [DIR]    # prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm-local.sh stop  [DIR]
#
# DIR defaults to /tmp/s2d-slurm. Ports are taken from S2D_SLURM_PORT (default 16817,
# using four consecutive ports). Runs slurmctld/slurmd as the current user (root on CI).
set -euo pipefail
cmd=${1:-}
dir=${2:-/tmp/s2d-slurm}
port=${S2D_SLURM_PORT:-16817}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host user
  host=$(hostname -s)
  user=$(id -un)
  mkdir -p "$dir"/{state,log,munge,spool/n1,spool/n2}
  cat >"$dir/slurm.conf" <<CONF
ClusterName=s2dlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
KillWait=5
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 2)) CPUs=1 RealMemory=2000 Gres=gpu:1 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 3)) CPUs=1 RealMemory=2000 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  cat >"$dir/gres.conf" <<CONF
AutoDetect=off
NodeName=n1 Name=gpu Count=1 File=/dev/null
NodeName=n2 Name=gpu Count=1 File=/dev/null
CONF
}

start() {
  install
  write_conf
  # our own munged: own socket, pid and log, with the system key (created if missing)
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  cp /etc/munge/munge.key "$dir/munge/munge.key" && chmod 600 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF"
  for n in n1 n2; do slurmd -f "$SLURM_CONF" -N "$n"; done
  for _ in $(seq 60); do
    if [ "$(sinfo -h -o '%t' -p debug 2>/dev/null | sort -u | tr -d '\n')" = "idle" ]; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 1
  done
  echo "slurm-local: nodes did not become idle; see $dir/log" >&2
  sinfo -N -l >&2 || true
  return 1
}

stop() {
  local f pid
  for f in "$dir"/slurmd-n1.pid "$dir"/slurmd-n2.pid "$dir"/slurmctld.pid "$dir"/munge/munged.pid; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

case "$cmd" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop [DIR]" >&2; exit 2 ;;
esac
