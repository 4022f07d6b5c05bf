"""Resuming a run whose ELBO has state of its own (baselines) equals the uninterrupted run.

The run is stopped after epoch 2 of 4 and resumed in a fresh setting: an empty param store,
new networks with other initial weights, a new ELBO and a new optimizer, as in a new process.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceGraph_ELBO
from torch import nn

import pyro_reparam as pr
from pyro_reparam.train.checkpoint import load

N, BATCH, EPOCHS, STOP = 48, 16, 4, 2


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 2, generator=g)
    z = (x[:, 0] > 0).float()
    return x, 2.0 * z - 1.0 + 0.5 * torch.randn(N, generator=g)


def _nets(init_seed, device="cpu"):
    torch.manual_seed(init_seed)
    encoder = nn.Linear(2, 1)
    baseline = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    return encoder.to(device), baseline.to(device)


def _pair(encoder, baseline, how):
    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(x.new_tensor(0.5)))
            pyro.sample("y", dist.Normal(2.0 * z - 1.0, 0.5), obs=y)

    def guide(x, y):
        pyro.module("encoder", encoder)
        if how == "guide registers the net":
            pyro.module("baseline", baseline)
        if how == "decaying":
            options = {"use_decaying_avg_baseline": True, "baseline_beta": 0.8}
        else:
            options = {"nn_baseline": baseline, "nn_baseline_input": x}
        with pyro.plate("data", x.shape[0]):
            logits = encoder(x).squeeze(-1)
            pyro.sample("z", dist.Bernoulli(logits=logits), infer={"baseline": options})

    return model, guide


CASES = {
    "plugin, the ELBO registers the net": (pr.ScoreFunctionELBO, "ELBO registers the net"),
    "plugin, the guide registers the net": (pr.ScoreFunctionELBO, "guide registers the net"),
    "plugin, running average": (pr.ScoreFunctionELBO, "decaying"),
    "TraceGraph_ELBO, the guide registers the net": (TraceGraph_ELBO, "guide registers the net"),
    "TraceGraph_ELBO, running average": (TraceGraph_ELBO, "decaying"),
}


def _fit(case, init_seed, epochs, ckpt_dir, resume=False, callbacks=(), device="cpu"):
    pyro.clear_param_store()
    make_elbo, how = CASES[case]
    encoder, baseline = _nets(init_seed, device)
    model, guide = _pair(encoder, baseline, how)
    history = pr.fit(
        model, guide, _data(), elbo=make_elbo(), optim=pyro.optim.Adam({"lr": 0.05}),
        epochs=epochs, batch_size=BATCH, seed=3, checkpoint_dir=ckpt_dir, resume=resume,
        progress=False, callbacks=callbacks, log=lambda _msg: None, device=device,
    )  # fmt: skip
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    weights = {k: v.detach().clone() for k, v in baseline.state_dict().items()}
    return history, params, weights


def _assert_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_with_baselines_equals_the_uninterrupted_run(tmp_path, case):
    full, full_params, full_net = _fit(case, 0, EPOCHS, tmp_path / "full")
    _fit(case, 0, STOP, tmp_path / "cut")
    assert load(tmp_path / "cut" / "checkpoint.pt")["epoch"] == STOP

    seen = {}

    def keep_net_weights(epoch, record):
        seen[epoch] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    resumed, params, net = _fit(case, 1, EPOCHS, tmp_path / "cut", resume=True,
                                callbacks=[keep_net_weights])  # fmt: skip
    assert sorted(seen) == [STOP + 1, EPOCHS]
    assert resumed.train_elbo == pytest.approx(full.train_elbo, rel=1e-6)
    for got, want in zip(resumed.records, full.records, strict=True):
        assert got["baselines"] == pytest.approx(want["baselines"], rel=1e-6)
    _assert_close(params, full_params)
    if CASES[case][1] != "decaying":
        _assert_close(net, full_net)  # the network's own tensors, not copies in the store
        moved = [k for k in net if not torch.equal(net[k], _nets(1)[1].state_dict()[k])]
        assert moved == list(net)  # every weight overwritten by the checkpoint, then trained
        last, before = seen[EPOCHS], seen[STOP + 1]
        trained = [k for k in last if "baseline" in k and not torch.equal(last[k], before[k])]
        assert trained, "the baseline network froze after the resume"


def test_the_elbo_state_is_saved_once_and_restored_before_the_first_step(tmp_path):
    """The ELBO's own net is in its state_dict, not in the checkpoint's param store part; a
    state loaded into a fresh ELBO waits for the site's first step."""
    _fit("plugin, the ELBO registers the net", 0, 1, tmp_path)
    state = load(tmp_path / "checkpoint.pt")
    assert sorted(state["ranks"][0]["elbo"]) == [
        "z.net.0.bias", "z.net.0.weight", "z.net.2.bias", "z.net.2.weight",
    ]  # fmt: skip
    assert all("baseline" not in k for k in state["params"])
    assert any("_pyro_reparam.baseline.z" in k for k in state["optim"])  # Adam's moments
    elbo = pr.ScoreFunctionELBO()
    elbo.load_state_dict(state["ranks"][0]["elbo"])
    assert elbo.state_dict().keys() == state["ranks"][0]["elbo"].keys()  # pending, still saved
    assert elbo.baseline_for("z") == "decaying"  # not made yet: the configured default


@pytest.mark.cuda
def test_resume_with_a_neural_baseline_on_cuda(tmp_path):
    """The checkpoint is read to the CPU; the pending state is copied into CUDA tensors."""
    case = "plugin, the ELBO registers the net"
    full, full_params, full_net = _fit(case, 0, EPOCHS, tmp_path / "full", device="cuda")
    _fit(case, 0, STOP, tmp_path / "cut", device="cuda")
    resumed, params, net = _fit(case, 1, EPOCHS, tmp_path / "cut", resume=True, device="cuda")
    assert resumed.train_elbo == pytest.approx(full.train_elbo, rel=1e-5)
    assert all(v.device.type == "cuda" for v in net.values())
    for got, want in ((net, full_net), (params, full_params)):
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
