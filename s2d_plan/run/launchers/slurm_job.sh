#!/bin/sh
# The batch script of every s2d-plan stage job (sbatch ... slurm_job.sh ARGV...): one task
# per node of the allocation, each running ARGV (python -m s2d_plan.run.launchers.node ...).
# The arguments arrive as an argv list; no plan text is ever parsed by a shell.
exec srun --kill-on-bad-exit=1 --ntasks-per-node=1 "$@"
