"""Inputs of cpu_time_1thread.sh: the first 50 Fashion-MNIST training images, their labels and a
torch-seeded initialisation of mnist-small / mnist-large, as .npy files in /tmp/trainstep-cpu/ARCH
(the layout the train_step_speed worker and xtask/python/lirpa_train_step.py read)."""
import gzip, numpy as np, sys, torch, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../xtask/python"))
import lirpa_train_step as L
d = "/usr/share/datasets/fashion-mnist"
with gzip.open(f"{d}/train-images-idx3-ubyte.gz") as f: X = np.frombuffer(f.read(), np.uint8, offset=16)[:50*784].reshape(50,1,28,28).astype(np.float32)/255
with gzip.open(f"{d}/train-labels-idx1-ubyte.gz") as f: y = np.frombuffer(f.read(), np.uint8, offset=8)[:50].astype(np.int64)
for arch, net in [("mnist-small", L.small()), ("mnist-large", L.large())]:
    torch.manual_seed(0)
    o = f"/tmp/trainstep-cpu/{arch}"; os.makedirs(o, exist_ok=True)
    np.save(f"{o}/X.npy", X); np.save(f"{o}/y.npy", y)
    for k, v in net.state_dict().items(): np.save(f"{o}/{k}.npy", v.numpy())
