#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for proving the Snakemake SLURM profile (tests/test_slurm.py).
#
#   sudo workflow/scripts/slurm_local.sh          # install if missing, configure, start, wait until idle
#   sudo workflow/scripts/slurm_local.sh stop     # stop the daemons it started
#
# Debian/Ubuntu, as root. Installs slurm-wlm and munge with apt when sbatch is missing, writes
# /etc/slurm/slurm.conf (cons_tres, one node "$(hostname -s)" at 127.0.0.1 with all CPUs and 90% of
# MemTotal, one count-only "gpu" GRES so rules asking for gpu=1 schedule and run one at a time, as
# `--resources gpu=1` does locally), starts munged, slurmctld and slurmd, and waits until sinfo shows the
# node idle. No accounting database: finished jobs are logged to $JOBCOMP (jobcomp/filetxt).
# It refuses to overwrite a slurm.conf it did not write (set SLURM_LOCAL_FORCE=1 to do so anyway).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
JOBCOMP=$LOGDIR/jobcomp.log
MARK="# written by gzmorph workflow/scripts/slurm_local.sh"
HOST=$(hostname -s)
FAKE_GPUS=${SLURM_LOCAL_GPUS:-1}

if [[ $(id -u) != 0 ]]; then
  echo "slurm_local.sh: must run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

stop() {
  for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill "$(cat "$pidfile")" || true
    fi
  done
}

if [[ ${1:-} == stop ]]; then
  stop
  exit 0
fi

if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge || { apt-get update -q && apt-get install -y -q slurm-wlm munge; }
fi

if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF" && [[ ${SLURM_LOCAL_FORCE:-0} != 1 ]]; then
  echo "slurm_local.sh: $CONF exists and was not written by this script; set SLURM_LOCAL_FORCE=1 to replace it" >&2
  exit 1
fi

CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
mkdir -p /etc/slurm "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd
GRES_NODE=""
GRES_TYPES=""
if [[ $FAKE_GPUS -gt 0 ]]; then
  GRES_NODE="Gres=gpu:$FAKE_GPUS"
  GRES_TYPES="GresTypes=gpu"
  # Stand-in GPUs on /dev/null: SLURM schedules them (gres/gpu counts) but no device is bound; the jobs'
  # TensorFlow finds no GPU and runs on the CPU. slurmd counts one GPU per File, so one line per GPU.
  { echo "$MARK"; for _ in $(seq "$FAKE_GPUS"); do echo "NodeName=$HOST Name=gpu File=/dev/null"; done; } \
    >/etc/slurm/gres.conf
fi
cat >"$CONF" <<EOF
$MARK
ClusterName=gzmorph-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SwitchType=switch/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
$GRES_TYPES
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
MinJobAge=3600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $GRES_NODE State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# munge: its key comes with the package; the daemon runs as the munge user.
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1 </dev/null; then
  [[ -s /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged
fi

running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
running /run/slurmctld.pid || slurmctld
running /run/slurmd.pid || slurmd
scontrol reconfigure >/dev/null 2>&1 || true

for _ in $(seq 60); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  if [[ $state == idle* ]]; then
    sinfo
    exit 0
  fi
  if [[ $state == down* || $state == drain* ]]; then
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  fi
  sleep 1
done
echo "slurm_local.sh: node $HOST not idle after 60 s (state: ${state:-none}); see $LOGDIR" >&2
tail -n 20 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" >&2 || true
exit 1
