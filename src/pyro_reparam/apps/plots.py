"""PNG figures of image models: grids of digits, interpolation rows, a 2-D latent space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from pyro_reparam.diagnostics import save_figure
from pyro_reparam.plotting import pyplot


def image_rows(
    rows: Sequence[torch.Tensor],
    labels: Sequence[str],
    shape: tuple[int, int],
    path: str | Path,
    title: str = "",
) -> Path:
    """One row of images per tensor in ``rows`` (each ``(n, H * W)``), labelled on the left."""
    plt = pyplot()
    n = max(r.shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n + 1.2, 1.0 * len(rows) + 0.4),
                             squeeze=False)  # fmt: skip
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        for j in range(n):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < row.shape[0]:
                ax.imshow(
                    row[j].detach().cpu().reshape(shape).numpy(), cmap="gray_r", vmin=0, vmax=1
                )
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)


def latent_scatter(z: torch.Tensor, labels: torch.Tensor | None, path: str | Path) -> Path:
    """2-D latent codes coloured by label."""
    plt = pyplot()
    z = z.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    colours = None if labels is None else labels.cpu().numpy()
    sc = ax.scatter(z[:, 0], z[:, 1], c=colours, cmap="tab10", s=8, alpha=0.8)
    if labels is not None:
        fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("z[0] (posterior mean)")
    ax.set_ylabel("z[1]")
    ax.set_title("latent space of the test images")
    return save_figure(fig, path)
