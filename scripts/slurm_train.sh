#!/bin/bash
# Multi-node STAPO / baseline training with Slurm: one `accelerate launch` per node, 8 GPU processes each.
#
#   mkdir -p logs && sbatch scripts/slurm_train.sh                    # 4 nodes x 8 GPUs, Qwen3-8B STAPO
#   RECIPE=recipes/qwen3-14b/grpo.yaml sbatch --nodes=8 scripts/slurm_train.sh
#   RECIPE=recipes/qwen3-1.7b/stapo.yaml ACCELERATE_CONFIG=accelerate_configs/zero2.yaml sbatch scripts/slurm_train.sh
#   sbatch scripts/slurm_train.sh --max_steps 400 --save_steps 100   # extra arguments go to train.py
#
# Submit from the repository root with the Python environment activated (sbatch passes the environment on
# to every node), after `mkdir -p logs` (Slurm opens the --output file before the script runs).
#
# Environment variables (all optional):
#   RECIPE              recipe passed to train.py --config        (default recipes/qwen3-8b/stapo.yaml)
#   ACCELERATE_CONFIG   accelerate config file                     (default accelerate_configs/multi_node_zero3.yaml)
#                       Any single-node config (zero2.yaml, zero3.yaml, ...) works too: the per-job values
#                       (machines, processes, rank, rendezvous address) are all passed on the command line.
#   NNODES              number of nodes; must equal the allocation (default: $SLURM_JOB_NUM_NODES).
#                       #SBATCH lines cannot read variables, so change the node count with `sbatch --nodes=N`.
#   GPUS_PER_NODE       processes per node (default 8)
#   MASTER_ADDR         rendezvous host (default: the first node of the allocation, from `scontrol show hostnames`)
#   MASTER_PORT         rendezvous port on that node (default 29500)
#   RECIPE_NUM_PROCESSES  number of processes the recipe's batch arithmetic was written for (default 8)
#   DRY_RUN=1           print the command one node would run (node $SLURM_NODEID, default 0) instead of srun
#
# Batch size: the recipes are written for 8 processes (generation_batch_size 2048 = 256 prompts x 8 rollouts;
# 1 x 8 x 64 = 512 completions = 64 prompts per optimizer step; 4 optimizer steps per generation batch).
# On NNODES x GPUS_PER_NODE processes this script keeps the same batches by passing
#   --gradient_accumulation_steps  recipe value x RECIPE_NUM_PROCESSES / (NNODES x GPUS_PER_NODE)
# e.g. 64 x 8 / 32 = 16 on 4 nodes; generation_batch_size stays 2048, so TRL derives steps_per_generation
# = 2048 / 32 = 64, still 4 optimizer steps per generation batch. (A recipe that sets steps_per_generation
# instead of generation_batch_size gets it rescaled the same way.) The total number of processes must divide
# 2048 and 512: 8, 16, 32, 64, ... GPUs.
#
# vLLM colocate (the recipes' vllm_mode): every GPU both trains and generates. Each process runs its own vLLM
# engine (or one per vllm_tensor_parallel_size group) and generates its share of the generation batch
# (2048 / 32 = 64 completions per GPU on 4 nodes), so no GPU is set aside for a vLLM server.
#
#SBATCH --job-name=stapo
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1          # one launcher per node; it starts GPUS_PER_NODE training processes
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --time=7-00:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --error=logs/%x-%j.err

set -euo pipefail

# Slurm runs a copy of this script from its spool directory; work from the directory sbatch was called in.
cd "${SLURM_SUBMIT_DIR:-$(pwd)}"

RECIPE=${RECIPE:-recipes/qwen3-8b/stapo.yaml}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-accelerate_configs/multi_node_zero3.yaml}
NNODES=${NNODES:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_PORT=${MASTER_PORT:-29500}
RECIPE_NUM_PROCESSES=${RECIPE_NUM_PROCESSES:-8}
PYTHON=${PYTHON:-python}

for f in "$RECIPE" "$ACCELERATE_CONFIG"; do
    [[ -f "$f" ]] || { echo "error: $f not found (run from the repository root)" >&2; exit 1; }
done

if [[ -n "${SLURM_JOB_NUM_NODES:-}" && "$NNODES" != "$SLURM_JOB_NUM_NODES" ]]; then
    echo "error: NNODES=$NNODES but the job has $SLURM_JOB_NUM_NODES nodes; submit with sbatch --nodes=$NNODES" >&2
    exit 1
fi

WORLD_SIZE=$((NNODES * GPUS_PER_NODE))

# Read the recipe's batch fields (steps_per_generation is 0 when the recipe uses generation_batch_size).
RECIPE_BATCH=$("$PYTHON" -c '
import sys, yaml
recipe = yaml.safe_load(open(sys.argv[1]))
print(recipe.get("gradient_accumulation_steps", 1), recipe.get("steps_per_generation") or 0)
' "$RECIPE")
read -r RECIPE_GRAD_ACC RECIPE_STEPS_PER_GEN <<< "$RECIPE_BATCH"

# rescale NAME VALUE: VALUE micro-steps on RECIPE_NUM_PROCESSES processes -> the same batch on WORLD_SIZE.
rescale() {
    if (( $2 * RECIPE_NUM_PROCESSES % WORLD_SIZE != 0 )); then
        echo "error: $1 = $2 on $RECIPE_NUM_PROCESSES processes cannot be rescaled to $WORLD_SIZE processes" >&2
        return 1
    fi
    echo $(( $2 * RECIPE_NUM_PROCESSES / WORLD_SIZE ))
}
GRAD_ACC=$(rescale gradient_accumulation_steps "$RECIPE_GRAD_ACC")
BATCH_ARGS="--gradient_accumulation_steps $GRAD_ACC"
if (( RECIPE_STEPS_PER_GEN > 0 )); then
    BATCH_ARGS="$BATCH_ARGS --steps_per_generation $(rescale steps_per_generation "$RECIPE_STEPS_PER_GEN")"
fi

# The first node of the allocation hosts the rendezvous (machine_rank 0).
if [[ -z "${MASTER_ADDR:-}" ]]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
fi

ACCELERATE_BIN=accelerate
if [[ "${DRY_RUN:-0}" == "1" ]]; then ACCELERATE_BIN="echo accelerate"; fi
export RECIPE ACCELERATE_CONFIG NNODES WORLD_SIZE MASTER_ADDR MASTER_PORT BATCH_ARGS ACCELERATE_BIN

# Fail fast instead of hanging when one rank dies inside a collective.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# One CPU thread per process unless set; raise it if data loading or the CPU optimizer (zero3_offload) needs more.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Newer Slurm versions no longer pass sbatch's --cpus-per-task on to srun.
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi

# Extra arguments of this script go to train.py, quoted once for the inner shell.
EXTRA_ARGS=""
if (( $# > 0 )); then EXTRA_ARGS=$(printf ' %q' "$@"); fi

# Single quotes: $SLURM_NODEID is expanded by each srun task on its own node (0 .. NNODES-1), and becomes
# that node's machine_rank. Command-line values override those of the accelerate config file.
LAUNCH='$ACCELERATE_BIN launch \
    --config_file "$ACCELERATE_CONFIG" \
    --num_machines "$NNODES" \
    --num_processes "$WORLD_SIZE" \
    --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$MASTER_ADDR" \
    --main_process_port "$MASTER_PORT" \
    --rdzv_backend static \
    train.py --config "$RECIPE" $BATCH_ARGS'"$EXTRA_ARGS"

echo "nodes=$NNODES processes=$WORLD_SIZE rendezvous=$MASTER_ADDR:$MASTER_PORT recipe=$RECIPE" \
     "accelerate_config=$ACCELERATE_CONFIG gradient_accumulation_steps=$GRAD_ACC (recipe: $RECIPE_GRAD_ACC on $RECIPE_NUM_PROCESSES)"

if [[ "${DRY_RUN:-0}" == "1" ]]; then
    SLURM_NODEID=${SLURM_NODEID:-0} bash -c "$LAUNCH"
    exit 0
fi

srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "$LAUNCH"
