#!/bin/bash
# Data-parallel robust training over MPI on Slurm: 4 ranks, each on its own node, each taking a
# quarter of every global batch of 64; gradients summed over the ranks every step; rank 0
# writes --out (on a shared file system, so --resume works from any node).
#
#   cargo build --release -p xtask --features mpi     # once, with OpenMPI's headers and libclang
#   sbatch docs/cluster/train-mpi-slurm.sh
#SBATCH --job-name=train-dp
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
#SBATCH --output=logs/train-%j.out
set -euo pipefail
XTASK=${XTASK:-$PWD/target/release/xtask}
mpirun -np "$SLURM_NTASKS" "$XTASK" train --mpi \
    --arch mnist-small --dataset fashion-mnist --eps 0.1 --eps-start 0.01 --ramp-epochs 10 \
    --epochs 20 --batch-size 64 --out results/train-dp
