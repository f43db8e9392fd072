#!/bin/bash
# CPU seconds (user+sys) per step, 1 thread, from the difference of two runs (R=2 and R=8), both
# sides on the same inputs (`python cpu_time_inputs.py` writes them: the first 50 Fashion-MNIST
# training images and a torch-seeded init of each model into /tmp/trainstep-cpu/ARCH). CPU time
# is far less sensitive than wall time to other jobs on a busy machine (not to cache sharing).
export RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MIMALLOC_PURGE_DELAY=-1 CANDLE_BARRIER_POOL_SPIN_LIMIT=100 MIMALLOC_ALLOW_LARGE_OS_PAGES=1
# Run from the repository root after `cargo build --release -p experiments --example train_step_speed`.
B=target/release/examples/train_step_speed
PY=${PYTHON:-/work/pyvenv/bin/python}
LIRPA=${LIRPA_DIR:-/work/lirpa/auto_LiRPA-0.7.1}
cpu() { /usr/bin/time -f "%U %S" "$@" 2>&1 >/dev/null | tail -1 | awk '{print $1+$2}'; }
for arch in mnist-small mnist-large; do for b in ibp crown-ibp; do
  L=$([ $b = ibp ] && echo IBP || echo CROWN-IBP)
  o2=$(cpu $B --worker $arch $b /tmp/trainstep-cpu/$arch 2); o8=$(cpu $B --worker $arch $b /tmp/trainstep-cpu/$arch 8)
  l2=$(PYTHONPATH=$LIRPA cpu $PY xtask/python/lirpa_train_step.py --dir /tmp/trainstep-cpu/$arch --arch $arch --method $L --repeats 2 --threads 1)
  l8=$(PYTHONPATH=$LIRPA cpu $PY xtask/python/lirpa_train_step.py --dir /tmp/trainstep-cpu/$arch --arch $arch --method $L --repeats 8 --threads 1)
  python3 -c "o=($o8-$o2)/6; l=($l8-$l2)/6; print(f'$arch $b 1-thread CPU s/step: ours {o:.4f} auto_LiRPA {l:.4f} ratio {l/o:.2f}x')"
done; done
