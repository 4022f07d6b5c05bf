"""The progress bar of :func:`~pyro_reparam.train.fit` (tqdm, on rank 0 only) and the validation
ELBO it shows at each epoch's end."""

from __future__ import annotations

import math
import warnings

from pyro_reparam.train.history import RECORD_KEYS


def progress_bar(enabled: bool, epochs: int, done_steps: int, steps_per_epoch: int):
    """A tqdm bar over every step of the run, starting at ``done_steps`` (``None`` if off)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=epochs * steps_per_epoch,
        initial=done_steps,
        unit="step",
        dynamic_ncols=True,
        desc="SVI",
    )


def show(bar, record: dict) -> None:
    """The epoch's ELBO and the scalars callbacks added to its record, on the bar."""
    if bar is not None:
        added = {k: f"{v:.4g}" for k, v in record.items()
                 if k not in RECORD_KEYS and isinstance(v, float)}  # fmt: skip
        bar.set_postfix(epoch=record["epoch"], elbo=f"{record['train_elbo']:.4g}", **added)


def evaluate(model, guide, elbo, val, full_data_size: int | bool, epoch: int) -> float | None:
    """Validation ELBO per datum (``None`` without validation data), with a warning naming the
    epoch when it is not finite. ``full_data_size``: the training size when each batch's loss
    already estimates the ELBO of that many data (see :mod:`~pyro_reparam.train.probe`)."""
    if val is None:
        return None
    total = 0.0
    for batch in val.epoch(0, 0, shuffle=False):
        total += float(elbo.loss(model, guide, *batch))
    value = -total / len(val) / full_data_size if full_data_size else -total / val.num_data
    if not math.isfinite(value):
        warnings.warn(
            f"fit: the validation ELBO of epoch {epoch + 1} is {value}: a validation datum has "
            "zero likelihood under the model (outside a support?) or the model overflowed "
            "there; check val_data",
            RuntimeWarning,
            stacklevel=2,
        )
    return value
