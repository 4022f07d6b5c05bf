"""Data parallel ``pr.fit`` under torchrun (gloo, CPU, two ranks, c10d rendezvous on the
loopback): two processes compute the one-process run, and a resumed run the uninterrupted one.

One torchrun launch runs every job of ``dist_script.JOBS``; the one-process references run here.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("dist_script.py")
sys.path.insert(0, str(SCRIPT.parent))
import dist_script  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The jobs' results per rank, from one two-process launch."""
    out = tmp_path_factory.mktemp("dist")
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
        "--nnodes=1",
        "--nproc-per-node=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch, str(SCRIPT), str(out)], env=env, timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {job: [torch.load(out / f"{job}_rank{r}.pt", weights_only=True) for r in (0, 1)]
            for job in dist_script.JOBS}  # fmt: skip


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(("job", "task", "epochs"), [("six_full", "six", 4), ("mle", "mle", 2)])
def test_two_ranks_compute_the_one_process_run(ranks, job, task, epochs):
    """Six parameters of six shapes with a score-function site and its running-average
    baseline (averaged gradients), and an unscaled model (summed gradients): parameters,
    reported ELBO and baselines equal one process's to float rounding."""
    r0, r1 = ranks[job]
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k  # the ranks stay identical
    one = dist_script.run(task, epochs)
    assert len(one["params"]) >= (6 if task == "six" else 1)
    assert _max_diff(r0["params"], one["params"]) < 1e-5
    assert r0["elbo"] == pytest.approx(one["elbo"], rel=1e-6)
    for got, want in zip(r0["baselines"], one["baselines"], strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    if task == "six":
        assert one["baselines"][0]  # the score-function site has a running average


@pytest.mark.slow
@pytest.mark.parametrize("task", ["six", "local"])
def test_a_distributed_resume_equals_the_uninterrupted_run(ranks, task):
    """Stopped after some epochs, RNGs scrambled per rank, resumed: bit for bit, per rank.
    ``local`` splits its last batch 2/1, so the ranks' random streams differ: each rank must get
    its own back (and its own running-average baseline, for ``six``)."""
    for rank in (0, 1):
        full, resumed = ranks[f"{task}_full"][rank], ranks[f"{task}_resumed"][rank]
        assert full["elbo"] == resumed["elbo"]
        assert _max_diff(full["params"], resumed["params"]) == 0.0
        assert torch.equal(full["rng"], resumed["rng"])
    if task == "local":
        assert not torch.equal(ranks["local_full"][0]["rng"], ranks["local_full"][1]["rng"])


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_both_after_the_same_step_and_resumes_exactly(ranks):
    """torchrun's agent stops its workers with SIGTERM on Ctrl-C (so do SLURM and Kubernetes):
    the rank that gets it finishes the step, the ranks agree, the checkpoint holds the step it
    landed in, and the resumed run is the uninterrupted one, bit for bit, on both ranks."""
    steps = dist_script.N // dist_script.BATCH
    for rank in (0, 1):
        got, full = ranks["six_sigterm"][rank], ranks["six_full"][rank]
        assert got["stopped"]
        assert got["position"] == divmod(dist_script.SIGTERM_STEP, steps)
        assert got["elbo"] == full["elbo"]
        assert _max_diff(got["params"], full["params"]) == 0.0
