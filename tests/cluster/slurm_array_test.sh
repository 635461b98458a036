#!/usr/bin/env bash
# A real one-node Slurm cluster (munged + slurmctld + slurmd on loopback, everything under a fresh temp dir) runs
# examples/slurm/caption-array.sbatch:
#  1. a 4-task array over a folder of images; the merged parts hold every input id exactly once and the same
#     id -> text as one process captioning the whole folder;
#  2. into a fresh output dir with slower items: one task is scancel'ed once it has written a record, resubmitted
#     alone (sbatch --array=<i>) and resumes its file; the merge has nothing missing, nothing duplicated.
#
#   slurm_array_test.sh CAPTION_PROGRAM MODEL_DIR IMAGES_DIR SBATCH_FILE
#
# Exit 77 (skipped) when not root or when munged / slurmctld / slurmd / sbatch are not installed (Debian:
# apt-get install slurm-wlm munge). KEEP_CLUSTER_TMP=1 keeps the temp dir (configuration, logs, outputs).
# Every wait is bounded and the whole run gives up after CLUSTER_TEST_DEADLINE seconds (default 200), before
# CTest's TIMEOUT (240) would SIGKILL this script and leave the job processes behind.
set -euo pipefail

if (($# != 4)); then
  echo "usage: $0 CAPTION_PROGRAM MODEL_DIR IMAGES_DIR SBATCH_FILE" >&2
  exit 2
fi
CAPTION="$(realpath "$1")"
MODEL="$(realpath "$2")"
IMAGES="$(realpath "$3")"
SBATCH_FILE="$(realpath "$4")"
# The images copied into the input folder (the pillow references: each one decodes): PNG and BMP variants.
N_IMAGES=50
DEADLINE="${CLUSTER_TEST_DEADLINE:-200}"
SECONDS=0

skip() {
  echo "SKIP: $*"
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "needs root (munged, slurmctld and slurmd run as root)"
PATH="$PATH:/usr/sbin:/sbin"
for p in munged slurmctld slurmd sbatch squeue scancel scontrol sinfo; do
  command -v "$p" >/dev/null 2>&1 || skip "$p not found (apt-get install slurm-wlm munge)"
done
[ -x "$CAPTION" ] || { echo "FAIL: $CAPTION is not executable" >&2; exit 1; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/ib-slurm.XXXXXX")"
chmod 0700 "$TMP"
# Every process started here inherits this marker; the cleanup also finds the job processes (whose slurmstepd
# slurmd double-forks away from itself) by it, and the slurmstepds (which clear their environment) by their
# open files in $TMP.
export IB_SLURM_TEST_DIR="$TMP"
MUNGED_PID="" CTLD_PID="" SLURMD_PID=""

log() { echo "[$(date +%T) +${SECONDS}s] $*"; }
fail() {
  echo "FAIL: $*" >&2
  FAILED=1
  exit 1
}
FAILED=0

descendants() {  # the process ids below $1, depth first
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    descendants "$c"
    echo "$c"
  done
}
cluster_pids() {  # processes with IB_SLURM_TEST_DIR=$TMP in their environment or a file open in $TMP (not this shell)
  {
    grep -lzxF "IB_SLURM_TEST_DIR=$TMP" /proc/[0-9]*/environ 2>/dev/null
    find /proc/[0-9]*/fd -mindepth 1 -maxdepth 1 -lname "$TMP/*" 2>/dev/null
  } | sed -n 's|^/proc/\([0-9]*\)/.*|\1|p' | sort -u | grep -vxF -e "$$" -e "$BASHPID"
  return 0
}
# shellcheck disable=SC2086  # $all, $pids: lists of process ids
stop_pids() {  # TERM the given daemons and their children, then KILL what is left after ~5 s
  local pid all="" i alive
  for pid in "$@"; do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && all+=" $(descendants "$pid") $pid"
  done
  [ -n "$all" ] || return 0
  kill -TERM $all 2>/dev/null
  for i in $(seq 50); do
    alive=0
    for pid in $all; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  kill -KILL $all 2>/dev/null
  return 0
}
# shellcheck disable=SC2086
cleanup() {
  local rc=$? pids i
  set +e
  trap - EXIT
  export -n IB_SLURM_TEST_DIR  # the processes started from here on are not the cluster's
  if [ -n "$CTLD_PID" ] && kill -0 "$CTLD_PID" 2>/dev/null &&
     [ -n "$(squeue --noheader --format=%i 2>/dev/null)" ]; then
    # jobs left (a failure or an interrupt mid-run): cancelled while slurmd can still reap them
    scancel --quiet --user=root >/dev/null 2>&1
    for i in $(seq 50); do
      [ -z "$(squeue --noheader --format=%i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  stop_pids "$SLURMD_PID" "$CTLD_PID" "$MUNGED_PID"
  pids="$(cluster_pids)"
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  if ((rc != 0 && rc != 77)) || ((FAILED)); then
    for f in "$TMP"/log/*.log "$TMP"/log/*.stdout "$TMP"/jobs/*; do
      [ -f "$f" ] || continue
      # a daemon's stdout repeats its log file: shown only when it failed before opening its log
      [[ "$f" == *.stdout && -s "${f%.stdout}.log" ]] && continue
      echo "===== $f (last 60 lines)"
      tail -n 60 "$f"
    done
  fi
  if [ -n "${KEEP_CLUSTER_TMP:-}" ]; then
    echo "kept $TMP"
  else
    rm -rf "$TMP"
  fi
  echo "wall time ${SECONDS}s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s
  local limit="$1" what="$2" i
  shift 2
  for ((i = 0; i < limit * 5; ++i)); do
    "$@" && return 0
    ((SECONDS < DEADLINE)) || fail "out of time (${DEADLINE}s) waiting for $what"
    sleep 0.2
  done
  fail "timed out after ${limit}s waiting for $what"
}

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {  # a TCP port nothing listens on, other than $1
  local p i
  for i in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    [ "$p" != "${1:-}" ] && port_is_free "$p" && { echo "$p"; return 0; }
  done
  fail "no free TCP port found"
}

mkdir -p "$TMP"/{munge,log,run,state,spool,jobs,in}

# ---- munge: own key, socket, pid, log and seed files
log "starting munged"
dd if=/dev/urandom of="$TMP/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$TMP/munge/munge.key"
MUNGE_SOCKET="$TMP/munge/munge.socket"
# In the foreground, a child of this script like the Slurm daemons (whatever kills this script's process tree
# reaches them), in its own session (see setsid below).
setsid munged --foreground --force --socket="$MUNGE_SOCKET" --key-file="$TMP/munge/munge.key" \
       --pid-file="$TMP/run/munged.pid" --log-file="$TMP/log/munged.log" --seed-file="$TMP/munge/munged.seed" \
       >>"$TMP/log/munged.stdout" 2>&1 &
MUNGED_PID=$!
munge_up() {
  kill -0 "$MUNGED_PID" 2>/dev/null || fail "munged exited"
  [ -S "$MUNGE_SOCKET" ]
}
wait_for 10 "munged's socket" munge_up

# ---- slurm.conf: one node (this machine's CPUs and memory), one partition, no accounting
CTLD_PORT="$(pick_port)"
SLURMD_PORT="$(pick_port "$CTLD_PORT")"
# The node as slurmd sees the hardware (`slurmd -C`: CPUs, sockets, cores, threads, RealMemory).
HW="$(slurmd -C 2>/dev/null | sed -n 's/^NodeName=[^ ]* \(CPUs=.*RealMemory=[0-9]*\).*/\1/p')"
[ -n "$HW" ] || HW="CPUs=$(nproc) RealMemory=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))"
export SLURM_CONF="$TMP/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=ibtest
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation=$TMP/state
SlurmdSpoolDir=$TMP/spool
SlurmctldPidFile=$TMP/run/slurmctld.pid
SlurmdPidFile=$TMP/run/slurmd.pid
SlurmctldLogFile=$TMP/log/slurmctld.log
SlurmdLogFile=$TMP/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$TMP/plugstack.conf
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
: >"$TMP/plugstack.conf"

log "starting slurmctld (port $CTLD_PORT) and slurmd (port $SLURMD_PORT): $HW"
# setsid: a Ctrl-C on this script reaches the daemons only through the cleanup, which cancels the jobs first.
setsid slurmctld -D -i -f "$SLURM_CONF" >>"$TMP/log/slurmctld.stdout" 2>&1 &
CTLD_PID=$!
setsid slurmd -D -N localhost -f "$SLURM_CONF" >>"$TMP/log/slurmd.stdout" 2>&1 &
SLURMD_PID=$!

node_idle() {
  kill -0 "$CTLD_PID" 2>/dev/null || fail "slurmctld exited"
  kill -0 "$SLURMD_PID" 2>/dev/null || fail "slurmd exited"
  [ "$(sinfo --noheader --nodes=localhost --format=%T 2>/dev/null)" = "idle" ]
}
wait_for 30 "the node to be idle" node_idle
log "node idle"

# ---- the input folder
mapfile -t picked < <(cd "$IMAGES" && find . -maxdepth 1 \( -name 'png_*.png' -o -name 'bmp_*.bmp' \) | LC_ALL=C sort |
                      head -n "$N_IMAGES")
(cd "$IMAGES" && cp -- "${picked[@]}" "$TMP/in/")
INPUT="$TMP/in"
count="$(find "$INPUT" -type f | wc -l)"
((count == N_IMAGES)) || fail "copied $count images from $IMAGES, wanted $N_IMAGES"

# ---- helpers
job_done() {  # no task of job $1 left in the queue
  [ -z "$(squeue --noheader --jobs="$1" --format=%i 2>/dev/null)" ]
}
submit() {  # submit OUT_DIR [sbatch options...] -- [tool options...]: prints the job id
  local out="$1" sb=() id
  shift
  while (($#)) && [ "$1" != "--" ]; do
    sb+=("$1")
    shift
  done
  shift
  id="$(MODEL="$MODEL" INPUT="$INPUT" OUT_DIR="$out" CAPTION="$CAPTION" NUM_SHARDS=4 \
        sbatch --parsable --chdir="$TMP" --output="$TMP/jobs/%A_%a.out" --error="$TMP/jobs/%A_%a.err" \
               "${sb[@]}" "$SBATCH_FILE" "$@")" || fail "sbatch failed"
  echo "${id%%;*}"
}
task_states() {  # the final state of each task of job $1 (sacct-free: scontrol keeps them for MinJobAge)
  scontrol --oneliner show job "$1" 2>/dev/null | sed -n 's/.*ArrayTaskId=\([0-9]*\).* JobState=\([A-Z_]*\).*/\1 \2/p' | sort -n
}
records_without_ms() {  # JSONL file $1's records (id, image, prompt, text, in the contract's order) less "ms", sorted
  sed 's/, *"ms": *[-+.0-9eE]*//' "$1" | LC_ALL=C sort
}
ids_of() {  # the ids of JSONL file $1, one a line, as written (the test's paths hold no quote nor backslash)
  sed -n 's/^{ *"id": *"\([^"]*\)".*/\1/p' "$1"
}
records() {  # complete (newline-terminated) lines of file $1
  if [ -f "$1" ]; then tr -cd '\n' <"$1" | wc -c; else echo 0; fi
}
GEN=(--max-new-tokens 4 --quiet)

# ---- 1. the whole array, then the merge against one process over the same folder
log "single-process reference run"
timeout 60 "$CAPTION" --model "$MODEL" --output "$TMP/single.jsonl" "${GEN[@]}" "$INPUT" 2>"$TMP/single.err" \
  || { cat "$TMP/single.err" >&2; fail "the single-process run failed"; }

log "run 1: 4-task array"
job="$(submit "$TMP/out1" -- "${GEN[@]}")"
wait_for 90 "job $job" job_done "$job"
states="$(task_states "$job")"
echo "$states"
[ "$(echo "$states" | grep -c ' COMPLETED$')" = 4 ] || fail "not every task of job $job completed: $states"
for i in 0 1 2 3; do
  n="$(records "$TMP/out1/captions-$i.jsonl")"
  want=$(((N_IMAGES - i + 3) / 4))
  [ "$n" = "$want" ] || fail "captions-$i.jsonl holds $n records, shard $i/4 of $N_IMAGES items is $want"
done
timeout 30 "$CAPTION" merge --expect "$INPUT" --output "$TMP/out1/captions.jsonl" "$TMP"/out1/captions-{0,1,2,3}.jsonl \
  2>"$TMP/merge1.err" || { cat "$TMP/merge1.err" >&2; fail "merge 1 failed"; }
cat "$TMP/merge1.err"
grep -q "merged $N_IMAGES records from 4 files; 0 duplicate ids; 0 missing" "$TMP/merge1.err" \
  || fail "merge 1 summary"
# every input id exactly once
diff <(cd "$INPUT" && find . -type f | sed "s|^\./|$INPUT/|" | LC_ALL=C sort) \
     <(ids_of "$TMP/out1/captions.jsonl" | LC_ALL=C sort) || fail "merged ids differ from the input files"
[ "$(grep -c '"text":' "$TMP/single.jsonl")" = "$N_IMAGES" ] || fail "the single-process run has no text for some items"
diff <(records_without_ms "$TMP/single.jsonl") <(records_without_ms "$TMP/out1/captions.jsonl") \
  || fail "the array's records differ from the single-process run's"
log "run 1 ok"

# ---- 2. cancel one task once it has written a record, resubmit it alone, merge
# Slow items, whatever the machine: the answer length (forced with --min-new-tokens) is raised until one item
# takes >= 150 ms on one thread more than a 1-token answer, so that a shard (13 items, one at a time) takes
# seconds and the cancel lands in its middle.
CALIB="$TMP/calibration"
mkdir -p "$CALIB/in"
cp "$INPUT/${picked[0]#./}" "$CALIB/in/"
one_item_ms() {  # wall time of a one-thread run over one image, with the given generation options
  local t0
  t0="$(date +%s%N)"
  timeout 60 "$CAPTION" --model "$MODEL" --threads 1 --batch-size 1 --quiet --overwrite \
    --output "$CALIB/out.jsonl" "$@" "$CALIB/in" 2>>"$CALIB/err" || fail "calibration run failed: $(cat "$CALIB/err")"
  echo $((($(date +%s%N) - t0) / 1000000))
}
base_ms="$(one_item_ms --max-new-tokens 1)"
tokens=250
while :; do
  item_ms="$(one_item_ms --min-new-tokens "$tokens" --max-new-tokens "$tokens")"
  ((item_ms - base_ms < 150 && tokens < 8000)) || break
  tokens=$((tokens * 3 / 2))
done
log "slow items: $tokens new tokens, $((item_ms - base_ms)) ms an item (a run with 1 token: $base_ms ms)"
SLOW=(--min-new-tokens "$tokens" --max-new-tokens "$tokens" --batch-size 1 --quiet)
log "run 2: slow array, cancel task 1"
job="$(submit "$TMP/out2" -- "${SLOW[@]}")"
CUT=1
has_record() { (($(records "$TMP/out2/captions-$CUT.jsonl") >= 1)); }
wait_for 90 "a record in captions-$CUT.jsonl" has_record
scancel "${job}_$CUT" || fail "scancel ${job}_$CUT"
wait_for 90 "job $job" job_done "$job"
states="$(task_states "$job")"
echo "$states"
echo "$states" | grep -qx "$CUT CANCELLED" || fail "task $CUT was not cancelled: $states"
[ "$(echo "$states" | grep -c ' COMPLETED$')" = 3 ] || fail "the other tasks did not complete: $states"
before="$(records "$TMP/out2/captions-$CUT.jsonl")"
want=$(((N_IMAGES - CUT + 3) / 4))
((before < want)) || fail "task $CUT finished its shard ($before records) before it was cancelled: make items slower"
log "task $CUT cancelled after $before of $want records; resubmitting it"
rc=0
timeout 30 "$CAPTION" merge --expect "$INPUT" --output "$TMP/out2/partial.jsonl" "$TMP"/out2/captions-{0,1,2,3}.jsonl \
  2>"$TMP/merge2a.err" || rc=$?
((rc == 1)) || { cat "$TMP/merge2a.err"; fail "merge with a cancelled task exited $rc, wanted 1 (ids missing)"; }
grep -q "; $((want - before)) missing" "$TMP/merge2a.err" || { cat "$TMP/merge2a.err"; fail "merge 2a summary"; }

job2="$(submit "$TMP/out2" --array="$CUT" -- "${SLOW[@]}")"
wait_for 90 "job $job2" job_done "$job2"
states="$(task_states "$job2")"
[ "$states" = "$CUT COMPLETED" ] || fail "the resubmitted task did not complete: $states"
n="$(records "$TMP/out2/captions-$CUT.jsonl")"
[ "$n" = "$want" ] || fail "captions-$CUT.jsonl holds $n records after the resume, wanted $want"
timeout 30 "$CAPTION" merge --expect "$INPUT" --output "$TMP/out2/captions.jsonl" "$TMP"/out2/captions-{0,1,2,3}.jsonl \
  2>"$TMP/merge2.err" || { cat "$TMP/merge2.err" >&2; fail "merge 2 failed"; }
cat "$TMP/merge2.err"
grep -q "merged $N_IMAGES records from 4 files; 0 duplicate ids; 0 missing" "$TMP/merge2.err" \
  || fail "merge 2 summary"
# nothing duplicated inside the resumed part either (merge keeps first occurrences only)
[ -z "$(ids_of "$TMP/out2/captions-$CUT.jsonl" | sort | uniq -d)" ] || fail "captions-$CUT.jsonl repeats ids"
log "run 2 ok"
echo "PASS: $N_IMAGES images, 4-task array = single process; cancelled task $CUT resumed"
