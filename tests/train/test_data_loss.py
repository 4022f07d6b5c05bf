"""No data loss: a checkpoint is refused when damaged (bit flips, truncation, junk), never
written with non-finite values, never shared by two runs, and written under unique names."""

import math
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_reparam as pr
from pyro_reparam.train.checkpoint import CheckpointError, load, save

SCRIPT = Path(__file__).with_name("train_script.py")


def model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    return x, x @ torch.tensor([1.0, -1.0]) + 0.5 * torch.randn(n, generator=g)


@pytest.fixture
def real_checkpoint(tmp_path) -> Path:
    pr.fit(model, AutoNormal(model), _data(), elbo=Trace_ELBO(), epochs=2, batch_size=8,
           checkpoint_dir=tmp_path / "run", progress=False)  # fmt: skip
    return tmp_path / "run" / "checkpoint.pt"


def _same(a, b) -> bool:
    """Equal to the bit: tensors (dtype, shape, bytes), floats (NaN too), containers."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.view(-1).view(torch.uint8).equal(b.view(-1).view(torch.uint8)))  # fmt: skip
    if isinstance(a, float):
        return isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def test_200_single_bit_flips_are_each_refused_or_harmless(real_checkpoint, tmp_path):
    original = real_checkpoint.read_bytes()
    want = load(real_checkpoint)
    rng = random.Random(0)
    silent = []
    flipped = tmp_path / "flipped.pt"
    for _ in range(200):
        bit = rng.randrange(len(original) * 8)
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        flipped.write_bytes(bytes(data))
        try:
            got = load(flipped)
        except CheckpointError as e:
            assert "\n" not in str(e)
            continue
        if not _same(got, want):
            silent.append(bit)
    assert silent == [], f"{len(silent)} of 200 flips loaded with changed values"


def _damaged(kind: str, good: bytes) -> bytes:
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "junk": b"earlier run",
        "torch.save": None,
        "appended": good + b"\0",
    }[kind]


@pytest.mark.parametrize(
    ("kind", "says"),
    [("empty", "is empty"), ("truncated", "is truncated"), ("junk", "b'earlier run'"),
     ("torch.save", "plain torch.save file"), ("appended", "longer than written")],
)  # fmt: skip
def test_a_damaged_or_foreign_file_is_refused_in_one_line(real_checkpoint, kind, says):
    data = _damaged(kind, real_checkpoint.read_bytes())
    if data is None:
        torch.save({"params": {}}, real_checkpoint)
    else:
        real_checkpoint.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        pr.fit(model, AutoNormal(model), _data(), elbo=Trace_ELBO(), epochs=3, batch_size=8,
               checkpoint_dir=real_checkpoint.parent, resume=True, progress=False)  # fmt: skip
    msg = str(info.value)
    assert says in msg and str(real_checkpoint) in msg and "\n" not in msg


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    """Each write goes to its own temporary file, renamed into place."""
    path = tmp_path / "checkpoint.pt"
    states = [{"params": {"w": torch.full((20_000,), float(i))}} for i in range(2)]
    errors = []

    def write(i):
        try:
            for _ in range(25):
                save(path, states[i])
        except Exception as e:
            errors.append(repr(e))

    def read():
        for _ in range(50):
            if path.exists():
                try:
                    got = load(path)["params"]["w"]
                    assert got.unique().numel() == 1
                except Exception as e:
                    errors.append(repr(e))

    threads = [threading.Thread(target=write, args=(i,)) for i in (0, 1)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp left


def test_a_second_run_on_a_checkpoint_folder_fails_at_once_naming_the_other(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--slow", "--epochs", "50"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1 done"):
                break
        with pytest.raises(CheckpointError) as info:
            pr.fit(model, AutoNormal(model), _data(), elbo=Trace_ELBO(), epochs=1,
                   checkpoint_dir=out / "ckpt", progress=False)  # fmt: skip
        msg = str(info.value)
        assert f"pid {proc.pid}" in msg and str(out / "ckpt") in msg and "\n" not in msg
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    from pyro_reparam.train.lock import FolderLock

    with FolderLock(out / "ckpt"):  # the kernel dropped the killed run's lock
        pass


class _Overflow:
    """A model whose one parameter gets a finite but enormous gradient from epoch 2 on."""

    def __init__(self):
        self.coef = 1e-7

    def model(self, x):
        p = pyro.param("p", torch.tensor(0.0))
        pyro.factor("f", -self.coef * p)

    def guide(self, x):
        pass

    def callback(self, epoch, record):
        self.coef = 3e38  # finite; times the learning rate (or squared, by Adam) it overflows


@pytest.mark.parametrize(
    ("optim", "says"),
    [(pyro.optim.SGD({"lr": 10.0}), "made 'p' non-finite"),
     (pyro.optim.Adam({"lr": 0.1}), "the optimizer's exp_avg_sq of 'p' is non-finite")],
)  # fmt: skip
def test_a_non_finite_state_is_never_checkpointed(tmp_path, optim, says):
    """SGD: the update makes the parameter -inf (finite loss and gradient). Adam: its squared
    average overflows while the parameter stays finite (and would freeze after a resume)."""
    run = _Overflow()
    with pytest.raises(pr.TrainingError) as info:
        pr.fit(run.model, run.guide, torch.zeros(4, 1), elbo=Trace_ELBO(), optim=optim,
               epochs=3, batch_size=4, checkpoint_dir=tmp_path, progress=False,
               callbacks=[run.callback])  # fmt: skip
    msg = str(info.value)
    assert says in msg and f"the last good checkpoint is {tmp_path / 'checkpoint.pt'}" in msg
    state = load(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["params"].values())


def test_a_state_that_could_not_be_read_back_is_never_written(tmp_path):
    """A callback's value a weights-only load refuses: a one-line error naming it, and the last
    good checkpoint stays readable (``save`` itself reads back what it would write)."""

    def adds_an_object(epoch, record):
        if epoch == 2:
            record["model_copy"] = object()

    with pytest.raises(TypeError, match=r"record\['model_copy'\] of epoch 2") as info:
        pr.fit(model, AutoNormal(model), _data(), elbo=Trace_ELBO(), epochs=3, batch_size=8,
               checkpoint_dir=tmp_path, progress=False, callbacks=[adds_an_object])  # fmt: skip
    assert "\n" not in str(info.value)
    assert load(tmp_path / "checkpoint.pt")["epoch"] == 1
    with pytest.raises(CheckpointError, match="cannot be read back"):
        save(tmp_path / "other.pt", {"obj": threading.Lock})
    assert not (tmp_path / "other.pt").exists()
