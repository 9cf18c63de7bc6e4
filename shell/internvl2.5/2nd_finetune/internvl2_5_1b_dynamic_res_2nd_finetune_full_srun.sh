#!/bin/sh
# SLURM (srun) variant of internvl2_5_1b_dynamic_res_2nd_finetune_full.sh: the same recipe, one srun task per GPU
# instead of torchrun (InternVL launches its large-model full finetunes this way). From the repo root:
#
#   PARTITION=gpu GPUS=16 GPUS_PER_NODE=8 [QUOTA_TYPE=reserved CPUS_PER_TASK=10 SRUN_ARGS="..."] \
#       sh shell/internvl2.5/2nd_finetune/internvl2_5_1b_dynamic_res_2nd_finetune_full_srun.sh [extra flags]
#
# GPUS is the total number of tasks; NODES defaults to GPUS / GPUS_PER_NODE. The finetune script maps SLURM's
# task variables to torch's (RANK, LOCAL_RANK, WORLD_SIZE; MASTER_ADDR = first host of the step's node list).
# Any other launcher runs under srun the same way: LAUNCHER=slurm sh shell/.../x.sh (see shell/common.sh).
LAUNCHER=slurm
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
export LAUNCHER GPUS_PER_NODE
exec sh "$(dirname "$0")/internvl2_5_1b_dynamic_res_2nd_finetune_full.sh" "$@"
