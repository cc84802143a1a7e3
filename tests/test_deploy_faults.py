"""A real Flower federation that survives its nodes' faults: a SuperNode killed (kill -9) after round 1 and
started again continues from the state it keeps on its own disk, with its DP-SGD count intact; a SuperNode
paused (SIGSTOP) costs each round at most one ``federation.round_timeout``, never the run: its reply is a
rejected update each round (no reply in time, or the SuperLink's "Node Unavailable" once it misses the node's
heartbeats), and the run ends with the others. (A warm federation's equality with the LocalGrid is
tests/test_warm_worker.py's; a TLS federation's, tests/test_deploy_security.py's.)"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from federation import _node_command, federation, start, tail

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("federation")]

TIMEOUT_S = 20


def _lines(job) -> list[dict]:
    metrics = Path(job.run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def test_a_killed_node_restarts_from_its_disk_and_a_paused_node_costs_one_timeout_per_round(tmp_path, job_factory):
    job = job_factory("faults", runtime="flower", privacy__dp_sgd=True, method__personal=["classifier"],
                      federation__rounds=3, federation__round_timeout=TIMEOUT_S, federation__max_failed_rounds=3)

    with federation(tmp_path / "fed", num_nodes=3, warm=True) as fed:
        run = fed.submit(job)
        deadline = time.monotonic() + 300
        while not any(line["round"] == 1 for line in _lines(job)):
            assert time.monotonic() < deadline and run.poll() is None, tail(fed.logs / "flwr-run.log")
            time.sleep(0.5)
        os.killpg(fed.nodes[0].pid, signal.SIGKILL)  # node 0: the SuperNode and its worker, no goodbye
        fed.nodes[0].wait(timeout=30)
        restarted = start(_node_command(f"127.0.0.1:{fed.public_port}", 0, 3, _free_port(), None, None, True),
                          fed.env, fed.logs / "supernode-0-restarted.log")
        fed.procs.append(restarted)
        os.killpg(fed.nodes[2].pid, signal.SIGSTOP)  # node 2: paused for the rest of the run
        try:
            code = run.wait(timeout=600)
        finally:
            os.killpg(fed.nodes[2].pid, signal.SIGCONT)
        restarted_log = (fed.logs / "supernode-0-restarted.log").read_text(errors="replace")

    assert code == 0, tail(fed.logs / "flwr-run.log")
    lines = [line for line in _lines(job) if line["round"] > 0]
    assert [line["round"] for line in lines] == [1, 2, 3] and not any(line.get("failed") for line in lines)
    for line in lines[1:]:  # the paused node's reply is a failure of each round, which waited once for it:
        # no reply within federation.round_timeout, or the SuperLink's error reply once it deems the node lost
        assert 2 not in [c["partition_id"] for c in line["clients"]] and line["rejected"], line
        assert line["wall_time_s"] < 2 * TIMEOUT_S + 15, line
    assert "restored the node state of round 1" in restarted_log
    trained = [c for line in lines for c in line["clients"] if c["partition_id"] == 0]
    assert len(trained) >= 2  # it trained after its restart, and its count went on from round 1's (2 steps a
    # round; 2 more if it was killed after saving a round whose reply it never sent: spent, so counted)
    assert trained[-1]["dp_sgd_steps"] in (2 * len(trained), 2 * len(trained) + 2), trained


def _free_port() -> int:
    from ffm.runtime.deploy import free_ports

    return free_ports(1)[0]
