#!/bin/bash
# Sharded, resumable certification as a Slurm array job: task I of N certifies the blocks
# b with b mod N = I and appends one record per finished block to $RECORDS.
#
#   sbatch docs/cluster/certify-slurm.sh            # all N tasks
#   sbatch --array=3 docs/cluster/certify-slurm.sh  # task 3 again (after a node failure): resumes
#   cargo xtask merge "$RECORDS" --json results/fashion_mnist.json   # once all are done
#
# The array must run 0..N-1 (the shard index is $SLURM_ARRAY_TASK_ID) and N must equal the
# number after `env/`. $RECORDS must be on a file system every node sees.
#SBATCH --job-name=certify
#SBATCH --array=0-7
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=01:00:00
#SBATCH --requeue
#SBATCH --output=logs/certify-%A_%a.out
set -euo pipefail
N=8
RECORDS=${RECORDS:-$PWD/results/records/fashion_mnist_eps0.1}
# A release build made once before submitting (`cargo build --release -p xtask`); running the
# binary directly avoids N concurrent cargo builds.
XTASK=${XTASK:-$PWD/target/release/xtask}
exec "$XTASK" certify \
    --model ../shared/models/fashion_mnist_small_eps0.1.pth --arch mnist-small \
    --dataset fashion-mnist --eps 0.1 --pgd \
    --shard "env/$N" --records "$RECORDS"
