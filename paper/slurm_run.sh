#!/bin/bash
# The paper's Qwen2.5-7B-Instruct run over 2 nodes x 4 GPUs (README: "Running on many GPUs").
# Submit with `sbatch paper/slurm_run.sh`; submitting it again resumes a job that ran out of time.
# The run folder must be on a filesystem every node sees.
#SBATCH --job-name=persona-gate
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --time=02:00:00
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 4 --rdzv_id "$SLURM_JOB_ID" \
  --rdzv_backend c10d --rdzv_endpoint "$head:29500" \
  -m persona_gate.cli.main run --config paper/qwen2.5-7b-instruct.toml --out runs/qwen-paper
