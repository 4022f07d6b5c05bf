"""``BayesianMLP.fit`` resumes exactly: its per-epoch ELBO terms draw from a stream of their own,
and the resumed history keeps them."""

import pyro
import torch

from pyro_reparam.models.bnn import BayesianMLP


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 2, generator=g)
    return x, x.sum(1).sin() + 0.1 * torch.randn(48, generator=g)


def _fit(epochs, folder, resume=False, init_seed=0):
    pyro.clear_param_store()
    torch.manual_seed(init_seed)  # another network's starting weights when resuming
    bnn = BayesianMLP(2, 1, (8,))
    history = bnn.fit(*_data(), epochs=epochs, batch_size=16, seed=0, checkpoint_dir=folder,
                      resume=resume, log=lambda _m: None)  # fmt: skip
    return history, {k: v.detach().clone() for k, v in bnn.state_dict().items()}


def test_bayesian_mlp_fit_resumes_exactly_with_its_terms(tmp_path):
    full, want = _fit(4, tmp_path / "full")
    _fit(2, tmp_path / "cut")
    resumed, got = _fit(4, tmp_path / "cut", resume=True, init_seed=5)
    assert resumed.train_elbo == full.train_elbo
    for key in ("kl", "expected_log_likelihood"):
        assert [r[key] for r in resumed.records] == [r[key] for r in full.records]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_the_terms_leave_the_training_stream_alone(tmp_path):
    """The same fit without the terms' callback draws the same training noise."""
    history, _ = _fit(2, None)
    pyro.clear_param_store()
    torch.manual_seed(0)
    bnn = BayesianMLP(2, 1, (8,))
    from pyro_reparam.train import fit

    x, y = bnn._prepare(*_data(), None)[:2]
    n = x.shape[0]
    plain = fit(lambda x, y: bnn.model(x, y, num_data=n), lambda x, y: bnn.guide(x, y, num_data=n),
                (x, y), elbo=bnn.elbo(num_data=n),
                optim=pyro.optim.ClippedAdam({"lr": 1e-2, "clip_norm": 10.0}), epochs=2,
                batch_size=16, seed=0, progress=False)  # fmt: skip
    assert plain.train_elbo == history.train_elbo
