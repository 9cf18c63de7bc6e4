# shell/common.sh: the launcher logic every script under shell/ shares. POSIX sh (users run `sh shell/.../x.sh`).
#
# A launcher sets its defaults, sources this file by a path relative to itself, and calls internvl_finetune with
# its own flags followed by the user's ("$@", so the user's win: the last occurrence of a flag counts):
#
#   GPUS=${GPUS:-8}; DEFAULT_BATCH_SIZE=128; PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-4}
#   OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/my_run}
#   . "$(dirname "$0")/../common.sh"          # from shell/<area>/x.sh; ../../common.sh one level deeper
#   internvl_finetune --model_name_or_path pretrained/X --meta_path data/meta.json --conv_style internvl2_5 "$@"
#
# internvl_finetune adds, before the launcher's flags: --output_dir, --per_device_train_batch_size,
# --gradient_accumulation_steps, --bf16 and --fp16 (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU).
# Launchers must not set those; users may (their flags come last).
#
# Environment (all optional):
#   GPUS                    processes per node: GPUs, or CPU processes on a machine without CUDA (default 1)
#   BATCH_SIZE              global batch size (default: the launcher's DEFAULT_BATCH_SIZE, raised to
#                           PER_DEVICE_BATCH_SIZE * GPUS * NNODES when smaller, with a note; without one that product)
#   PER_DEVICE_BATCH_SIZE   micro batch per process (default 1)
#                           GRADIENT_ACC = BATCH_SIZE / PER_DEVICE_BATCH_SIZE / (GPUS * NNODES)
#   OUTPUT_DIR              checkpoints, tensorboard runs/, training_log.txt and the final model
#   MASTER_PORT, MASTER_ADDR (127.0.0.1), NNODES (1), NODE_RANK (0)   torchrun rendezvous; on one node without
#                           MASTER_PORT torchrun --standalone picks a free port, otherwise MASTER_PORT defaults
#                           to InternVL's 34229
#   PYTHON                  interpreter (default: .venv/bin/python when present, else python3)
#   LAUNCHER                torchrun (default) or slurm: srun -p $PARTITION --gres=gpu:$GPUS_PER_NODE
#                           --nodes=$NODES --ntasks=$GPUS ... (GPUS is then the total task count; QUOTA_TYPE,
#                           CPUS_PER_TASK, SRUN_ARGS as in InternVL's srun scripts). The finetune script maps
#                           SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS to torch's RANK/LOCAL_RANK/WORLD_SIZE.
#   DRY_RUN=1               print the command (one argument per line) instead of running it
#   INTERNVL_DEVICE         cuda-bf16 | cuda-fp16 | cpu instead of asking torch
#
# On a machine without CUDA the same scripts run on CPU: torch.distributed over gloo, fp32, DeepSpeed (when a
# --deepspeed config is passed) with its CPU accelerator (DS_ACCELERATOR=cpu) and torch's AdamW, and one
# intra-op thread per process unless OMP_NUM_THREADS is set: on a busy 2-core machine two threads made the tiny
# demo's steps ~10x slower (20 steps: 100.8 s with 2 threads, 9.7 s with 1), and its matrices are too small to
# gain from more.
# Re-running a launcher with the same OUTPUT_DIR resumes from its last complete checkpoint; pass
# --overwrite_output_dir True to start over.

internvl_die() {
    echo "error: $*" >&2
    exit 1
}

internvl_has_flag() {  # internvl_has_flag --flag ARGS...: whether ARGS hold --flag (DeepSpeed needs a launcher)
    _flag=$1
    shift
    for _a in "$@"; do
        case "$_a" in "$_flag" | "$_flag"=*) return 0 ;; esac
    done
    return 1
}

internvl_is_uint() {
    case "$1" in
        '' | *[!0-9]*) return 1 ;;
        *) return 0 ;;
    esac
}

# repository root: the nearest folder above the launcher that holds shell/common.sh
INTERNVL_ROOT=$(cd "$(dirname "$0")" && pwd)
while [ "$INTERNVL_ROOT" != / ] && [ ! -f "$INTERNVL_ROOT/shell/common.sh" ]; do
    INTERNVL_ROOT=$(dirname "$INTERNVL_ROOT")
done
[ -f "$INTERNVL_ROOT/shell/common.sh" ] || internvl_die "cannot find the repository root above $0"
cd "$INTERNVL_ROOT" || internvl_die "cannot cd to $INTERNVL_ROOT"

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
INTERNVL_ENTRY=internvl_chat/internvl/train/internvl_chat_finetune.py

GPUS=${GPUS:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
if [ -z "${MASTER_PORT:-}" ] && [ "$NNODES" = 1 ]; then INTERNVL_STANDALONE=1; fi
MASTER_PORT=${MASTER_PORT:-34229}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-1}
LAUNCHER=${LAUNCHER:-torchrun}
for _v in GPUS NNODES NODE_RANK MASTER_PORT PER_DEVICE_BATCH_SIZE; do
    eval "_x=\$$_v"
    internvl_is_uint "$_x" || internvl_die "$_v must be a whole number, got '$_x'"
done
[ "$GPUS" -ge 1 ] || internvl_die "GPUS must be >= 1"
[ "$PER_DEVICE_BATCH_SIZE" -ge 1 ] || internvl_die "PER_DEVICE_BATCH_SIZE must be >= 1"

if [ "$LAUNCHER" = slurm ]; then WORLD=$GPUS; else WORLD=$((GPUS * NNODES)); fi
if [ -z "${BATCH_SIZE:-}" ]; then
    BATCH_SIZE=${DEFAULT_BATCH_SIZE:-$((PER_DEVICE_BATCH_SIZE * WORLD))}
    if [ "$BATCH_SIZE" -lt $((PER_DEVICE_BATCH_SIZE * WORLD)) ]; then
        echo "note: the launcher's global batch $BATCH_SIZE is smaller than PER_DEVICE_BATCH_SIZE=$PER_DEVICE_BATCH_SIZE" \
            "x $WORLD processes; using $((PER_DEVICE_BATCH_SIZE * WORLD)) (set BATCH_SIZE to choose)" >&2
        BATCH_SIZE=$((PER_DEVICE_BATCH_SIZE * WORLD))
    fi
fi
internvl_is_uint "$BATCH_SIZE" || internvl_die "BATCH_SIZE must be a whole number, got '$BATCH_SIZE'"
GRADIENT_ACC=$((BATCH_SIZE / PER_DEVICE_BATCH_SIZE / WORLD))
[ "$GRADIENT_ACC" -ge 1 ] ||
    internvl_die "BATCH_SIZE=$BATCH_SIZE is smaller than PER_DEVICE_BATCH_SIZE=$PER_DEVICE_BATCH_SIZE x $WORLD processes"
if [ $((GRADIENT_ACC * PER_DEVICE_BATCH_SIZE * WORLD)) -ne "$BATCH_SIZE" ]; then
    echo "warning: BATCH_SIZE=$BATCH_SIZE is not a multiple of PER_DEVICE_BATCH_SIZE x processes;" \
        "the global batch is $((GRADIENT_ACC * PER_DEVICE_BATCH_SIZE * WORLD))" >&2
fi

export PYTHONPATH="$INTERNVL_ROOT/internvl_chat${PYTHONPATH:+:$PYTHONPATH}"
export MASTER_PORT LAUNCHER TF_CPP_MIN_LOG_LEVEL=3 TOKENIZERS_PARALLELISM=false

# cuda-bf16 | cuda-fp16 (GPUs without bf16, e.g. V100/T4) | cpu; INTERNVL_DEVICE overrides the detection
INTERNVL_DETECT='import torch
if not torch.cuda.is_available(): print("cpu")
else: print("cuda-bf16" if torch.cuda.is_bf16_supported() else "cuda-fp16")'
INTERNVL_DEVICE=${INTERNVL_DEVICE:-$("$PYTHON" -c "$INTERNVL_DETECT")} ||
    internvl_die "$PYTHON cannot import torch (create the environment with: make venv)"
case "$INTERNVL_DEVICE" in
    cuda-bf16) INTERNVL_PRECISION="--bf16 True --fp16 False" ;;
    cuda-fp16)
        INTERNVL_PRECISION="--bf16 False --fp16 True"
        echo "warning: this GPU has no bf16; training in fp16 with loss scaling" >&2
        ;;
    cpu)
        INTERNVL_PRECISION="--bf16 False --fp16 False"
        export DS_ACCELERATOR=cpu
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
        ;;
    *) internvl_die "INTERNVL_DEVICE must be cuda-bf16, cuda-fp16 or cpu, got '$INTERNVL_DEVICE'" ;;
esac

internvl_finetune() {
    # shellcheck disable=SC2086  # INTERNVL_PRECISION is a list of words on purpose
    set -- --output_dir "$OUTPUT_DIR" --per_device_train_batch_size "$PER_DEVICE_BATCH_SIZE" \
        --gradient_accumulation_steps "$GRADIENT_ACC" $INTERNVL_PRECISION "$@"
    if [ "$LAUNCHER" = slurm ]; then
        for _v in PARTITION GPUS_PER_NODE; do
            eval "_x=\${$_v:-}"
            [ -n "$_x" ] || internvl_die "LAUNCHER=slurm needs $_v"
        done
        NODES=${NODES:-$((GPUS / GPUS_PER_NODE))}
        # shellcheck disable=SC2086  # SRUN_ARGS is a list of words on purpose
        set -- srun -p "$PARTITION" --job-name="${JOB_NAME:-internvl}" --gres="gpu:$GPUS_PER_NODE" --nodes="$NODES" \
            --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="${CPUS_PER_TASK:-10}" \
            --kill-on-bad-exit=1 ${QUOTA_TYPE:+--quotatype="$QUOTA_TYPE"} ${SRUN_ARGS:-} \
            "$PYTHON" -u "$INTERNVL_ENTRY" "$@"
    elif [ "$WORLD" = 1 ] && ! internvl_has_flag --deepspeed "$@"; then
        # one process without DeepSpeed: no launcher, no process group, no DDP wrapper
        set -- "$PYTHON" -u "$INTERNVL_ENTRY" "$@"
    elif [ -n "${INTERNVL_STANDALONE:-}" ]; then  # one node, no MASTER_PORT given: torchrun picks a free port
        set -- "$PYTHON" -m internvl.train.launch --standalone --nproc_per_node="$GPUS" "$INTERNVL_ENTRY" "$@"
    else  # torchrun's arguments; internvl.train.launch prints a worker's bad-input line once (see its docstring)
        set -- "$PYTHON" -m internvl.train.launch --nnodes="$NNODES" --node_rank="$NODE_RANK" \
            --master_addr="$MASTER_ADDR" --nproc_per_node="$GPUS" --master_port="$MASTER_PORT" "$INTERNVL_ENTRY" "$@"
    fi
    if [ -n "${DRY_RUN:-}" ]; then
        printf '%s\n' "$@"
        return 0
    fi
    mkdir -p "$OUTPUT_DIR" || internvl_die "cannot create OUTPUT_DIR=$OUTPUT_DIR"
    echo "InternVL finetune: $WORLD process(es), per-device batch $PER_DEVICE_BATCH_SIZE, gradient accumulation" \
        "$GRADIENT_ACC, global batch $((GRADIENT_ACC * PER_DEVICE_BATCH_SIZE * WORLD)), device $INTERNVL_DEVICE," \
        "output $OUTPUT_DIR" | tee -a "$OUTPUT_DIR/training_log.txt"
    _status=$(mktemp)
    { "$@" 2>&1; echo $? >"$_status"; } | tee -a "$OUTPUT_DIR/training_log.txt"
    _rc=$(cat "$_status")
    rm -f "$_status"
    return "$_rc"
}
