"""Bad inputs to ``fit`` and to the checkpoint functions: each row gets a one-line error that
names the argument (or the file) and, where there is one, what to pass instead. Every row fails
before training starts."""

from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch.utils.data import TensorDataset

import pyro_reparam as pr
from pyro_reparam.train.checkpoint import CheckpointError, load, save


def model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    return x, x @ torch.tensor([1.0, -1.0]) + 0.5 * torch.randn(n, generator=g)


X, Y = _data()
NAN, INF = float("nan"), float("inf")
A_FILE = "<a file>"  # replaced by a path to an existing file
ADAM = pyro.optim.Adam


def _sched(lr):
    return pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": lr}, "gamma": 0.9}
    )


def row(change, error, match, id):
    return pytest.param(change, error, match, id=id)


FIT_ROWS = [
    # the model, the guide and the log
    row({"model": None}, TypeError, "model must be a callable", "model None"),
    row({"model": "model.py"}, TypeError, "model must be a callable", "model a string"),
    row({"guide": 42}, TypeError, "guide must be a callable", "guide an int"),
    row({"log": "stdout"}, TypeError, "log must be a callable", "log a string"),
    # data
    row({"data": (X, Y[:10])}, ValueError, "different numbers of rows", "data rows differ"),
    row({"data": (X[:0], Y[:0])}, ValueError, "data is empty", "data empty"),
    row({"data": TensorDataset(X[:0], Y[:0])}, ValueError, "data is empty", "Dataset empty"),
    row({"data": (X * NAN, Y)}, ValueError, r"data\[0\] contains NaN", "data NaN"),
    row({"data": (X, Y / 0.0)}, ValueError, r"data\[1\] contains NaN or inf", "data inf"),
    row({"data": [[1.0, 2.0]]}, TypeError, "data must be a tensor", "data a list of lists"),
    row({"data": "data.csv"}, TypeError, "data must be a tensor", "data a file name"),
    row({"data": torch.tensor(1.0)}, ValueError, r"data\[0\] is a scalar", "data a scalar"),
    row({"data": ()}, TypeError, "data must be a tensor", "data an empty tuple"),
    row({"data": None}, TypeError, "data must be a tensor.*got NoneType", "data None"),
    row({"data": X.numpy()}, TypeError, "data must be a tensor.*got ndarray", "data numpy"),
    row({"data": (X, "y")}, TypeError, "data must be a tensor", "data tensor and string"),
    # epochs and batch_size
    row({"epochs": 0}, ValueError, "epochs must be a positive integer", "epochs 0"),
    row({"epochs": 2.5}, ValueError, "epochs must be a positive integer", "epochs float"),
    row({"epochs": -3}, ValueError, "epochs must be a positive integer", "epochs negative"),
    row({"epochs": True}, ValueError, "epochs must be a positive integer", "epochs bool"),
    row({"epochs": "10"}, ValueError, "epochs must be a positive integer", "epochs string"),
    row({"epochs": None}, ValueError, "epochs must be a positive integer", "epochs None"),
    row({"batch_size": -1}, ValueError, "batch_size must be a positive integer", "batch -1"),
    row({"batch_size": 0}, ValueError, "batch_size must be a positive integer", "batch 0"),
    row({"batch_size": 1.5}, ValueError, "batch_size must be a positive integer", "batch float"),
    row({"batch_size": "128"}, ValueError, "batch_size must be a positive integer", "batch str"),
    # device
    row({"device": "gpu"}, ValueError, "device='gpu' is not a device", "device gpu"),
    row({"device": "cuda:x"}, ValueError, "device='cuda:x' is not a device", "device cuda:x"),
    row({"device": "mps"}, ValueError, "device type 'mps' is not supported", "device mps"),
    row({"device": "meta"}, ValueError, "device type 'meta' is not supported", "device meta"),
    row({"device": 3.5}, TypeError, "device must be a string or torch.device", "device float"),
    # seed
    row({"seed": -1}, ValueError, r"seed must be an integer in \[0, 2\*\*32\)", "seed negative"),
    row({"seed": 2**40}, ValueError, "seed must be an integer", "seed too large"),
    row({"seed": 1.5}, ValueError, "seed must be an integer", "seed float"),
    row({"seed": "0"}, ValueError, "seed must be an integer", "seed string"),
    # optim
    row({"optim": torch.optim.Adam}, TypeError, "optim must be a Pyro optimizer.*torch.optim",
        "optim a torch class"),
    row({"optim": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)}, TypeError,
        "optim must be a Pyro optimizer.*torch.optim", "optim a torch optimizer"),
    row({"optim": ADAM}, TypeError, "the constructor 'Adam'; call it", "optim uncalled"),
    row({"optim": "adam"}, TypeError, "optim must be a Pyro optimizer.*got a str", "optim str"),
    row({"optim": ADAM({"lr": NAN})}, ValueError, "optim's lr is nan", "lr NaN"),
    row({"optim": ADAM({"lr": -0.1})}, ValueError, "optim's lr is -0.1", "lr negative"),
    row({"optim": ADAM({"lr": INF})}, ValueError, "optim's lr is inf", "lr inf"),
    row({"optim": ADAM({"lr": 100.0})}, ValueError, "optim's lr is 100.0: above 10", "lr 100"),
    row({"optim": ADAM({"lr": "fast"})}, TypeError, "optim's lr must be a number", "lr str"),
    row({"optim": ADAM(lambda name: {"lr": -1.0})}, ValueError,
        "optim's lr for parameter 'AutoNormal.locs.w' is -1.0", "lr per parameter"),
    row({"optim": _sched(NAN)}, ValueError, "optim's lr is nan", "scheduler lr NaN"),
    row({"optim": _sched(50.0)}, ValueError, "above 10", "scheduler lr 50"),
    # elbo
    row({"elbo": "trace"}, TypeError, "elbo must be a pyro.infer.ELBO", "elbo string"),
    row({"elbo": Trace_ELBO}, TypeError, r"elbo is the class Trace_ELBO; pass an instance",
        "elbo a class"),
    row({"elbo": 42}, TypeError, "elbo must be a pyro.infer.ELBO", "elbo int"),
    # val_data
    row({"val_data": X}, ValueError, "val_data has 1 tensor", "val_data arity"),
    row({"val_data": (X[:3] * INF, Y[:3])}, ValueError, r"val_data\[0\] contains NaN",
        "val_data inf"),
    row({"val_data": (X[:0], Y[:0])}, ValueError, "val_data is empty", "val_data empty"),
    row({"val_data": "val.csv"}, TypeError, "val_data must be a tensor", "val_data string"),
    # checkpoint_dir and resume
    row({"checkpoint_dir": A_FILE}, ValueError, "checkpoint_dir=.* is a file, not a folder",
        "checkpoint_dir a file"),
    row({"checkpoint_dir": 42}, TypeError, "checkpoint_dir must be a folder path",
        "checkpoint_dir int"),
    row({"checkpoint_dir": ""}, ValueError, "checkpoint_dir is an empty string",
        "checkpoint_dir empty"),
    row({"resume": True}, ValueError, "resume=True needs checkpoint_dir", "resume without dir"),
    row({"resume": "yes"}, TypeError, "resume must be True or False", "resume string"),
    # switches
    row({"progress": "no"}, TypeError, "progress must be True or False", "progress string"),
    row({"jit": 1}, TypeError, "jit must be True or False", "jit int"),
    row({"jit": True, "elbo": pyro.infer.RenyiELBO()}, ValueError, "jit=True compiles",
        "jit with an uncompilable ELBO"),
    row({"distributed": True}, ValueError, "not started by torchrun", "distributed no torchrun"),
    row({"distributed": "auto"}, TypeError, "distributed must be None, True or False",
        "distributed string"),
    # callbacks
    row({"callbacks": [42]}, TypeError, "callbacks must be callables", "callbacks [42]"),
    row({"callbacks": print}, TypeError, r"wrap it: callbacks=\[f\]", "callbacks a function"),
    row({"callbacks": "print"}, TypeError, "callbacks must be a list of callables",
        "callbacks a string"),
    row({"callbacks": 42}, TypeError, "callbacks must be a list of callables", "callbacks int"),
    # clip_norm
    row({"clip_norm": 0.0}, ValueError, "clip_norm must be a finite number > 0", "clip 0"),
    row({"clip_norm": -1.0}, ValueError, "clip_norm must be a finite number > 0", "clip -1"),
    row({"clip_norm": NAN}, ValueError, "clip_norm must be a finite number > 0", "clip NaN"),
    row({"clip_norm": INF}, ValueError, "clip_norm must be a finite number > 0", "clip inf"),
    row({"clip_norm": "1"}, ValueError, "clip_norm must be a finite number > 0", "clip str"),
    row({"clip_norm": True}, ValueError, "clip_norm must be a finite number > 0", "clip bool"),
    # scheduler_step
    row({"scheduler_step": "batch"}, ValueError, "scheduler_step must be one of",
        "scheduler_step unknown"),
    row({"scheduler_step": "step", "optim": ADAM({"lr": 0.01})}, ValueError,
        "scheduler_step='step' steps a learning-rate scheduler", "scheduler_step plain optim"),
    # a misspelt argument
    row({"epoch": 3}, TypeError, "unexpected keyword argument 'epoch'", "epoch misspelt"),
]  # fmt: skip
if not torch.cuda.is_available():
    FIT_ROWS.append(row({"device": "cuda"}, ValueError, "no CUDA device is available",
                        "device cuda without one"))  # fmt: skip


def positive_model(x, y):
    """A Gamma likelihood: data must be positive."""
    rate = pyro.param("rate", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Gamma(2.0, rate), obs=y)


@pytest.mark.parametrize(("change", "error", "match"), FIT_ROWS)
def test_a_bad_argument_to_fit_gets_a_one_line_error_naming_it(tmp_path, change, error, match):
    kwargs = {"data": (X, Y), "elbo": Trace_ELBO(), "progress": False, **change}
    if kwargs.get("checkpoint_dir") == A_FILE:
        kwargs["checkpoint_dir"] = tmp_path / "checkpoint.pt"
        kwargs["checkpoint_dir"].write_bytes(b"")
    m = kwargs.pop("model", model)
    guide = kwargs.pop("guide", AutoNormal(model))
    data = kwargs.pop("data")
    with pytest.raises(error, match=match) as info:
        pr.fit(m, guide, data, **kwargs)
    assert "\n" not in str(info.value)


def test_data_outside_the_likelihood_support_is_a_data_error():
    with pytest.raises(ValueError, match="data: the data at observed model site 'y'") as info:
        pr.fit(positive_model, lambda x, y: None, (X, Y), elbo=Trace_ELBO(), progress=False)
    assert "Gamma" in str(info.value) and "\n" not in str(info.value)


CHECKPOINT_ROWS = [
    row("missing", CheckpointError, "no checkpoint at .* nothing there", "load missing"),
    row("folder", CheckpointError, "no checkpoint at .* a folder there", "load a folder"),
    row(b"", CheckpointError, r"is empty \(0 bytes\)", "load empty"),
    row(b"earlier run", CheckpointError, "not a pyro-reparam checkpoint", "load junk"),
    row(b"pyro-reparam checkpoint\nversion x", CheckpointError, "damaged checkpoint header",
        "load damaged header"),
    row(b"pyro-reparam checkpoint\nversion 2 sha256 " + b"0" * 64 + b" bytes 0\n",
        CheckpointError, "version 2; this pyro-reparam reads version 3", "load old version"),
    row(b"pyro-reparam checkpoint\nversion 3 sha256 " + b"0" * 64 + b" bytes 4\nabcd",
        CheckpointError, "is damaged: its content does not match", "load wrong hash"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "error", "match"), CHECKPOINT_ROWS)
def test_load_of_a_bad_file_gets_a_one_line_error_naming_it(tmp_path, content, error, match):
    path = tmp_path / "checkpoint.pt"
    if content == "folder":
        path.mkdir()
    elif content != "missing":
        path.write_bytes(content)
    with pytest.raises(error, match=match) as info:
        load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


SAVE_ROWS = [
    row(("no/such/folder/checkpoint.pt", {}), CheckpointError, "folder .* does not exist",
        "save into a missing folder"),
    row(("checkpoint.pt", "state"), TypeError, "state must be a dict, got str", "save a str"),
    row(("checkpoint.pt", {"x": np.zeros(2)}), CheckpointError, "cannot be read back",
        "save a numpy array"),
    row(("checkpoint.pt", {"f": Path}), CheckpointError, "cannot be read back",
        "save a class"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "error", "match"), SAVE_ROWS)
def test_save_of_a_bad_state_gets_a_one_line_error(tmp_path, args, error, match):
    name, state = args
    with pytest.raises(error, match=match) as info:
        save(tmp_path / name, state)
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing written, no temporary file left
