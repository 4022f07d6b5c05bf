"""How many CPU threads torch uses in the command-line jobs.

torch starts one intra-op thread per core. The ready models are small (a few hundred thousand
weights, batches of at most a few hundred rows), so extra threads mostly add synchronization,
and on a shared 2-core machine they oversubscribe it: ``make demo`` took 10 minutes with the
default and 77 s with one thread, and the BNN's HMC ran 45x faster. The policy, first match:

1. ``--threads N`` on the command line;
2. the environment: ``PYRO_REPARAM_THREADS``, else ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
   (which torch reads itself: then nothing is changed);
3. one thread.
"""

from __future__ import annotations

import os

import torch

ENV_VARIABLE = "PYRO_REPARAM_THREADS"
DEFAULT_THREADS = 1


def apply_thread_policy(threads: int | None = None) -> int:
    """Set torch's intra-op thread count by the policy above; returns the count in force."""
    if threads is None and os.environ.get(ENV_VARIABLE):
        raw = os.environ[ENV_VARIABLE]
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{ENV_VARIABLE}={raw!r}: expected a positive integer")
        threads = int(raw)
    if threads is None and (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        return torch.get_num_threads()
    torch.set_num_threads(threads or DEFAULT_THREADS)
    return torch.get_num_threads()
