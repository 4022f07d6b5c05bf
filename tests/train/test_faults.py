"""Faults said for what they are, in one line: data outside a likelihood's support, an infinite
gradient with a finite loss (naming the parameter, never stale ones of earlier fits), a
validation ELBO that is not finite."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_reparam as pr


def bernoulli_model(x):
    """A Bernoulli likelihood on pixel intensities, as in a VAE given grey-scale images."""
    logits = pyro.param("logits", torch.zeros(x.shape[1]))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def no_guide(x):
    pass


@pytest.mark.parametrize("validation", [True, False])
def test_data_outside_the_likelihood_support_is_named_before_training(validation):
    pyro.enable_validation(validation)
    intensities = torch.rand(16, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError) as info:
        pr.fit(bernoulli_model, no_guide, intensities, elbo=Trace_ELBO(), epochs=1,
               progress=False)  # fmt: skip
    msg = str(info.value)
    assert "observed model site 'x'" in msg and "Boolean()" in msg and "Bernoulli" in msg
    assert "64 of 64 values" in msg and "range [0." in msg and "\n" not in msg


def test_data_outside_the_support_in_a_later_batch_is_named_at_its_step():
    x = torch.ones(16, 4)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))  # epoch 1, seed 0
    x[perm[12]] = 0.5  # a row of the second batch
    with pytest.raises(pr.TrainingError) as info:
        pr.fit(bernoulli_model, no_guide, x, elbo=Trace_ELBO(), epochs=1, batch_size=8,
               progress=False)  # fmt: skip
    msg = str(info.value)
    assert msg.startswith("at epoch 1, step 1, the data at observed model site 'x'")
    assert "4 of 32 values" in msg and "e.g. 0.5" in msg and "\n" not in msg


def sqrt_model(x):
    """Finite loss, infinite gradient: d sqrt(p) / dp at p = 0."""
    p = pyro.param("p", torch.tensor(0.0))
    pyro.factor("f", p.sqrt() + 0.0 * x.sum())


def test_an_infinite_gradient_names_its_parameter_and_no_stale_one():
    pyro.param("stale_from_an_earlier_fit", torch.tensor(float("nan")))  # store not cleared
    with pytest.raises(pr.TrainingError) as info:
        pr.fit(sqrt_model, no_guide, torch.zeros(4, 1), elbo=Trace_ELBO(), epochs=1,
               progress=False)  # fmt: skip
    msg = str(info.value)
    assert "non-finite gradient of 'p' with a finite loss at epoch 1, step 0" in msg
    assert "stale" not in msg and "\n" not in msg


def sharp_model(x, y):
    """Its noise vanishes for x > 5: a validation point there has zero likelihood."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    scale = torch.where(x > 5, torch.tensor(1e-30), torch.tensor(1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(w * x, scale), obs=y)


def test_a_non_finite_validation_elbo_is_said_naming_the_epoch():
    x = torch.linspace(-1, 1, 16)
    val = (torch.tensor([0.0, 10.0]), torch.tensor([0.0, 0.0]))
    with pytest.warns(RuntimeWarning, match="validation ELBO of epoch 1 is -inf"):
        history = pr.fit(sharp_model, AutoNormal(sharp_model), (x, x), elbo=Trace_ELBO(),
                         epochs=1, val_data=val, progress=False)  # fmt: skip
    assert history.val_elbo == [float("-inf")]


def test_val_data_outside_the_support_is_named():
    x = torch.ones(8, 4)
    with pytest.raises(ValueError, match="val_data: the data at observed model site 'x'"):
        pr.fit(bernoulli_model, no_guide, x, elbo=Trace_ELBO(), epochs=1, progress=False,
               val_data=torch.full((4, 4), 0.5))  # fmt: skip
