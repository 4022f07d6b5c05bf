"""The argument checks of :func:`~pyro_reparam.train.fit`: one-line errors naming the argument."""

from __future__ import annotations

import torch
from pyro.infer import ELBO
from pyro.optim import PyroOptim


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (``None`` -> CPU), with an error that says what to pass."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"fit: device={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("fit: device='cuda' but no CUDA device is available; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"fit: device type {dev.type!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def check_options(
    model, guide, elbo, optim, epochs, batch_size, checkpoint_dir, resume, callbacks, clip_norm
) -> None:
    if not callable(model) or not callable(guide):
        raise TypeError("fit: model and guide must be callables (Pyro model and guide functions)")
    if elbo is not None and not isinstance(elbo, ELBO):
        raise TypeError(
            f"fit: elbo must be a pyro.infer.ELBO (e.g. Trace_ELBO()), got {type(elbo).__name__}"
        )
    if optim is not None and not isinstance(optim, PyroOptim):
        raise TypeError(
            "fit: optim must be a Pyro optimizer, e.g. pyro.optim.Adam({'lr': 1e-3}), not "
            f"{type(optim).__name__}"
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fit: {name} must be a positive integer, got {value!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs checkpoint_dir=... (where the checkpoint is)")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"fit: clip_norm must be > 0 (or None), got {clip_norm!r}")
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"fit: callbacks must be callables f(epoch, record), got {cb!r}")
