"""Checkpoint files: written atomically under a unique name, hashed, and read without running
code.

A file is a two-line text header, ``pyro-reparam checkpoint`` and
``version 3 sha256 <hex> bytes <n>``, followed by the ``n`` bytes of a ``torch.save`` payload
whose SHA-256 is ``<hex>``. :func:`load` refuses a file whose payload does not match its hash
(a flipped bit, a truncated copy, an edit) before it is unpickled, then reads the payload with
``torch.load(..., weights_only=True)``, whose unpickler builds tensors and primitive containers
only: a crafted file is refused, naming the global it asked for, and runs nothing. The hash
detects damage, not malice (anyone can recompute it); ``weights_only`` is what keeps code out.

:func:`save` writes to a fresh temporary file in the same folder (``tempfile``), fsyncs it and
renames it over the target (atomic on POSIX), so that a reader sees the old file or the new
one, never a part, and two writers never share a temporary name. What a checkpoint holds is
:mod:`~pyro_reparam.train.state`'s business.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

VERSION = 3
MAGIC = b"pyro-reparam checkpoint\n"
_HEADER = re.compile(rb"version (\d+) sha256 ([0-9a-f]{64}) bytes (\d+)\n")
_BLOCKED = re.compile(r"GLOBAL ([\w.]+)")
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, damaged, foreign, tampered with, for another
    model, or a checkpoint folder another run holds. The message is one line."""


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically, with its content hash."""
    path = Path(path)
    if not isinstance(state, dict):
        raise TypeError(f"save: state must be a dict, got {type(state).__name__}")
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: the folder {path.parent} does not exist")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    _readable(payload, path)
    digest = hashlib.sha256(payload).hexdigest()
    header = MAGIC + f"version {VERSION} sha256 {digest} bytes {len(payload)}\n".encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _readable(payload: bytes, path: Path) -> None:
    """Refuse to write what :func:`load` would refuse to read (an object that is not a tensor
    or a primitive), rather than find out on resume."""
    try:
        torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = _BLOCKED.search(str(e))
        what = blocked.group(1) if blocked else "an object that is not a tensor"
        raise CheckpointError(
            f"not writing {path}: the state holds {what}, which a checkpoint cannot be read "
            "back with; keep tensors, numbers, strings and containers of them"
        ) from None


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a crash right after it keeps the new file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; anything else raises :class:`CheckpointError`
    with one line that says what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "nothing"
        raise CheckpointError(f"no checkpoint at {path} (there is {what} there)")
    data = path.read_bytes()
    payload = _payload(path, data)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = _BLOCKED.search(str(e))
        asked = f"the global {blocked.group(1)}" if blocked else "an object that is not a tensor"
        raise CheckpointError(
            f"{path} asks to load {asked}, which no pyro-reparam checkpoint holds: refused "
            "without running it (the file was crafted or tampered with); delete it"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path} has a valid hash but torch cannot read its payload "
            f"({type(e).__name__}: {_first_line(e)}); delete it or use an earlier copy"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint")
    return state


def _payload(path: Path, data: bytes) -> bytes:
    """The payload of a checkpoint file's bytes, checked against its header."""
    if not data:
        raise CheckpointError(
            f"{path} is empty (0 bytes), not a checkpoint; delete it, or start afresh in "
            "another checkpoint_dir"
        )
    if not data.startswith(MAGIC):
        kind = ("a plain torch.save file, or a checkpoint from before content hashes"
                if data.startswith(ZIP_MAGIC) else "foreign")  # fmt: skip
        raise CheckpointError(
            f"{path} is not a pyro-reparam checkpoint ({kind}: it starts with {data[:16]!r}); "
            "move it away, or start afresh in another checkpoint_dir"
        )
    header = _HEADER.match(data, len(MAGIC))
    if header is None:
        raise CheckpointError(f"{path} has a damaged checkpoint header; it cannot be trusted")
    version, digest, size = int(header.group(1)), header.group(2).decode(), int(header.group(3))
    if version != VERSION:
        raise CheckpointError(
            f"{path} is a checkpoint of version {version}; this pyro-reparam reads version "
            f"{VERSION}: start afresh, or resume it with the version that wrote it"
        )
    payload = data[header.end() :]
    if len(payload) != size:
        cut = "truncated" if len(payload) < size else "longer than written"
        raise CheckpointError(
            f"{path} is {cut}: its payload has {len(payload)} of {size} bytes (a copy cut "
            "short or appended to); use an earlier copy or start afresh"
        )
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(
            f"{path} is damaged: its content does not match the SHA-256 written with it (a "
            "flipped bit or an edit); it is refused. Use an earlier copy or start afresh"
        )
    return payload


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else "no message"
