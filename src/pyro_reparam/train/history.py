"""The per-epoch records of a :func:`~pyro_reparam.train.fit` run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD_KEYS = ("epoch", "train_elbo", "val_elbo", "seconds", "baselines")
"""What :func:`fit` records itself; scalars that callbacks add are shown in the progress bar."""


@dataclass
class History:
    """Per-epoch records of a :func:`fit` run.

    ``records[i]`` has ``epoch``, ``train_elbo`` (per datum), ``val_elbo`` (or ``None``),
    ``seconds`` and ``baselines`` (running-average baseline values by site, if any).

    Per datum means the epoch's summed batch losses over ``N`` when each batch is a piece of the
    data (local latents, unscaled likelihood), and the mean batch loss over ``N`` when the model
    scales each batch's likelihood up to the data set (``N / B``: global latents, subsampled
    plates), since each such batch loss already estimates the whole ELBO.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    plan: Any = None
    checkpoint: Path | None = None
    stopped_early: bool = False

    @property
    def train_elbo(self) -> list[float]:
        return [r["train_elbo"] for r in self.records]

    @property
    def val_elbo(self) -> list[float | None]:
        return [r["val_elbo"] for r in self.records]

    def plot(self, path: str | Path, title: str = "ELBO") -> Path:
        """Save the train (and validation) ELBO curves as a PNG."""
        from pyro_reparam.plotting import pyplot

        plt = pyplot()
        epochs = [r["epoch"] for r in self.records]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(epochs, self.train_elbo, label="train", marker="." if len(epochs) < 30 else None)
        if any(v is not None for v in self.val_elbo):
            ax.plot(epochs, self.val_elbo, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("ELBO per datum (nats)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def baseline_state(elbo) -> dict[str, float]:
    """The ELBO's running-average baselines by site (``elbo.baseline_state()``, or that of the
    ELBO it wraps as ``elbo.inner``); empty for ELBOs that keep none."""
    for candidate in (elbo, getattr(elbo, "inner", None)):
        get = getattr(candidate, "baseline_state", None)
        if callable(get):
            return dict(get())
    return {}
