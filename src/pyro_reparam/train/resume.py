"""Putting a run back where its checkpoint left it, or refusing to when the call does not fit
the checkpoint (one line each: what differs and what to pass)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_reparam.train import state as st
from pyro_reparam.train.optimizers import reconcile
from pyro_reparam.train.rng import set_rng_state


@dataclass(frozen=True)
class Position:
    """Where a run starts: the epoch, the step in it, the summed loss of the steps before, and
    the RNG state at the epoch's start (mid-epoch only)."""

    epoch: int = 0
    step: int = 0
    total: float = 0.0
    epoch_rng: Any = None


def check_fits(state: dict, run: dict[str, int], epochs: int, path: Path) -> None:
    """Refuse a checkpoint of another data set, batch size, seed or number of ranks, and
    ``epochs`` below the epochs it has finished."""
    saved = state["run"]
    for key, now in run.items():
        if saved.get(key) != now:
            raise ValueError(
                f"fit: resume: {path} was written by a run with {key}={saved.get(key)!r}, this "
                f"call has {key}={now!r}; pass {key}={saved.get(key)!r} to continue it, or "
                "start afresh in another checkpoint_dir"
            )
    if epochs < state["epoch"]:
        raise ValueError(
            f"fit: epochs={epochs} but {path} has finished {state['epoch']} epochs; pass "
            f"epochs >= {state['epoch']} to continue (or start afresh in another checkpoint_dir)"
        )


def restore(state: dict, rank: int, elbo, optim, path: Path, say: Callable[[str], None]) -> dict:
    """Parameters, the ELBO's and optimizer's state and this rank's RNG state from ``state``
    (already checked); returns the optimizer state handed to ``optim`` (saved again with the
    live one until every parameter has taken its part)."""
    st.restore_param_store(state["params"], path)
    mine = state["ranks"][rank]
    st.restore_elbo_state(elbo, mine["elbo"], path)
    optim_state = reconcile(optim, state["optim_kind"], state["optim"], str(path), say)
    optim.set_state(optim_state)
    set_rng_state(mine["rng"])
    return optim_state


def position(state: dict, rank: int) -> Position:
    epoch_rng = state["ranks"][rank].get("epoch_rng")
    return Position(state["epoch"], state["step"], state["partial_loss"], epoch_rng)
