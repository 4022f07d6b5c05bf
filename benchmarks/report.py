"""Writing a benchmark's figures: ``<name>.json`` (all numbers) and ``<name>.md`` (the table)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    """The machine the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


def write(out: Path, name: str, summary: dict, title: str, body: str) -> None:
    """Save ``summary`` (with the machine added) and a Markdown page ``# title`` + ``body``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine(), **summary}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    (out / f"{name}.md").write_text(f"# {title}\n\nMachine: {summary['machine']}\n\n{body}")
