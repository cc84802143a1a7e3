"""ffm's warm ClientApp worker: the flwr internals it stands on, its error handling, and a federation of
two ``ffm deploy supernode --warm`` nodes that ends where the in-process LocalGrid ends."""

from __future__ import annotations

import inspect
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w
import torch
from federation import checkpoint, federation, metrics, tail, wait_for
from flwr.app import ConfigRecord, Context, Message, RecordDict

from ffm import flwr_internals as fi
from ffm.data import export_split, party_dir
from ffm.runtime import run_local, set_task_identity
from ffm.runtime.deploy import (
    app_pyproject,
    deploy_env,
    free_ports,
    start,
    stop,
    supernode_command,
    warm_worker_command,
)
from ffm.runtime.warm_worker import WarmWorker
from ffm.workspace import workspace_for

WORKER_LINE = re.compile(r"ffm warm worker pid=(\d+): task \d+ \((\w+)\) (\w+) in [\d.]+ s [^;]*; "
                         r"tasks served by this process: (\d+)")


def test_the_flwr_internals_the_worker_uses_are_where_it_expects():
    # flwr 1.42 internals (ffm/flwr_internals.py): a flwr upgrade that moves or changes them fails here
    def params(fn) -> list[str]:
        return list(inspect.signature(fn).parameters)

    assert params(fi.pull_task_input) == ["client"]
    assert params(fi.push_message) == ["client", "message", "context"]
    assert params(fi.push_task_output) == ["client", "context", "sub_status", "details"]
    assert {"server_address", "insecure", "root_certificates", "interceptors", "retry_invoker"} <= set(
        params(fi.RuntimeHttpClient.from_server_address))
    for method in ("AcquireTask", "SendTaskHeartbeat", "PullTaskInput", "PushTaskOutput", "PullMessages",
                   "PushMessages", "PullObject", "PushObject", "ConfirmMessageReceived"):
        assert callable(getattr(fi.RuntimeHttpClient, method)), method
    assert params(fi.RuntimeTokenHttpInterceptor) == ["token"]
    assert params(fi.RuntimeVersionHttpInterceptor) == ["component_name"]
    assert params(fi.HeartbeatSender) == ["heartbeat_fn"]
    assert {"start", "stop", "is_running"} <= set(dir(fi.HeartbeatSender))
    assert {"max_tries", "max_time"} <= set(params(fi.RetryInvoker))
    assert fi.TaskType.CLIENT_APP.value == "flwr-clientapp"
    assert (fi.SubStatus.COMPLETED, fi.SubStatus.FAILED) == ("completed", "failed")
    assert isinstance(fi.ErrorCode.CLIENT_APP_RAISED_EXCEPTION, int)
    assert "supported_task_types" in fi.AcquireTaskRequest.DESCRIPTOR.fields_by_name
    # the LocalGrid's worker processes (ffm/runtime/pool.py) exchange messages and contexts as these protobufs
    assert params(fi.message_to_proto) == ["message"] and params(fi.context_to_proto) == ["context"]
    assert params(fi.message_from_proto) == ["message_proto"] and params(fi.context_from_proto) == ["context_proto"]
    assert {"content", "metadata"} <= set(fi.ProtoMessage.DESCRIPTOR.fields_by_name)
    assert {"state", "run_config", "node_config"} <= set(fi.ProtoContext.DESCRIPTOR.fields_by_name)
    assert "success" in fi.SendTaskHeartbeatRequest().DESCRIPTOR.file.message_types_by_name[
        "SendTaskHeartbeatResponse"].fields_by_name


def test_a_warm_supernode_runs_with_process_isolation_beside_one_worker():
    cold = supernode_command(superlink="10.0.0.1:9091", partition_id=1, num_partitions=3, runtime_port=9200, tls=None)
    warm = supernode_command(superlink="10.0.0.1:9091", partition_id=1, num_partitions=3, runtime_port=9200,
                             tls=None, warm=True)

    assert "--isolation" not in cold
    assert warm == [*cold, "--isolation", "process"]
    assert warm_worker_command(9200) == [sys.executable, "-m", "ffm.runtime.warm_worker",
                                         "--runtime-api", "127.0.0.1:9200", "--insecure"]


class _FakeRuntime:
    """Stands in for flwr's Runtime API calls: records what the worker pushes."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.replies: list[Message] = []
        self.outputs: list[tuple[str, str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        client = SimpleNamespace(SendTaskHeartbeat=lambda _req: SimpleNamespace(success=True), close=lambda: None)
        monkeypatch.setattr(WarmWorker, "_client", lambda self, interceptors, invoker: client)
        buffer = io.BytesIO()  # the run's app bundle: ffm's own, so the worker's app check lets it run
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("pyproject.toml", tomli_w.dumps(app_pyproject()))
        fab = SimpleNamespace(content=buffer.getvalue())
        monkeypatch.setattr(fi, "pull_task_input", lambda _client: (self.message, Context(
            run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={}), SimpleNamespace(run_id=1), fab))
        monkeypatch.setattr(fi, "push_message", lambda _client, reply, _context: self.replies.append(reply))
        monkeypatch.setattr(fi, "push_task_output",
                            lambda client, context, sub_status, details: self.outputs.append((sub_status, details)))


def test_a_raising_clientapp_becomes_an_error_reply_and_a_failed_task_and_the_worker_serves_on(monkeypatch):
    set_task_identity(run_id=1)
    incoming = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=2,
                       message_type="train")
    runtime = _FakeRuntime(incoming)
    runtime.install(monkeypatch)
    calls: list[str] = []

    def app(message: Message, context: Context) -> Message:
        calls.append(message.metadata.message_type)
        if len(calls) == 1:
            raise ValueError("bad partition")
        return Message(RecordDict(), reply_to=message)

    worker = WarmWorker("127.0.0.1:1", app=app)

    failed = worker.run_task("token-1", task_id=7)
    completed = worker.run_task("token-2", task_id=8)

    assert (failed.status, completed.status) == ("failed", "completed")
    assert "bad partition" in failed.details
    assert runtime.replies[0].has_error() and "bad partition" in runtime.replies[0].error.reason
    assert runtime.replies[0].error.code == fi.ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert not runtime.replies[1].has_error()
    assert [status for status, _ in runtime.outputs] == ["failed", "completed"]
    assert worker.served == 2


# --- a real federation of warm SuperNodes ---------------------------------------------------------------------


def _worker_lines(log: Path) -> list[tuple[int, str, str, int]]:
    """(pid, message type, status, tasks served so far) of every task a node's warm worker logged."""
    return [(int(pid), kind, status, int(served))
            for pid, kind, status, served in WORKER_LINE.findall(log.read_text(errors="replace"))]


def _accuracies(run_dir: str) -> list[float]:
    return [line["test_accuracy"] for line in metrics(run_dir)]


@pytest.mark.slow
def test_two_warm_supernodes_on_their_own_data_end_where_the_local_grid_ends(job_factory, tmp_path):
    # Prepare: the split exported; each node gets a private copy of its own folder, the server of the test
    # set; the export and the job's data source are gone, so no process can read anyone else's data.
    local = job_factory("local", federation__num_clients=2)
    run_local(local)
    export_split(workspace_for(local).data, tmp_path / "split")
    disks = [shutil.copytree(party_dir(tmp_path / "split", k), tmp_path / f"owner-{k}") for k in range(2)]
    server = shutil.copytree(tmp_path / "split" / "server", tmp_path / "server-disk")
    shutil.rmtree(tmp_path / "split")
    deployed = job_factory("deployed", runtime="flower", federation__num_clients=2, data__source="csv",
                           data__path=str(tmp_path / "deleted.csv"), data__test_path=str(server))

    # Execute: train and evaluate on every node (2 rounds: 4 ClientApp tasks per node)
    with federation(tmp_path / "fed", num_nodes=2, data_paths=disks, warm=True) as fed:
        seconds = fed.run(deployed, timeout=150)

    # Assert: the same model as the LocalGrid, and every node's tasks ran in ONE long-lived process
    torch.testing.assert_close(checkpoint(deployed.run_dir), checkpoint(local.run_dir))
    assert _accuracies(deployed.run_dir) == pytest.approx(_accuracies(local.run_dir))
    for pid in range(2):
        log = fed.logs / f"supernode-{pid}.log"
        lines = _worker_lines(log)
        assert len({worker_pid for worker_pid, *_ in lines}) == 1, lines
        assert [(kind, status, served) for _, kind, status, served in lines] == [
            ("train", "completed", 1), ("evaluate", "completed", 2),
            ("train", "completed", 3), ("evaluate", "completed", 4)], lines
        assert "stopping after 4 tasks" in log.read_text(errors="replace")
    rounds = [json.loads(line)["wall_time_s"] for line in
              (Path(deployed.run_dir) / "metrics.jsonl").read_text().splitlines() if json.loads(line)["round"] > 0]
    print(f"warm federation: 2 rounds in {seconds:.1f} s (flwr run); seconds per round {rounds}")


# --- ending the pair -------------------------------------------------------------------------------------------


def _seconds_until_group_gone(proc: subprocess.Popen, timeout: float) -> float | None:
    """Seconds until no process of ``proc``'s group is left, or None when some are still there after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        proc.poll()  # reap the leader: a zombie still counts as a member of its group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


@pytest.mark.slow
def test_a_warm_supernode_and_its_worker_end_cleanly_within_5_s_of_sigterm_to_their_group(tmp_path):
    # Prepare: `ffm deploy supernode --warm` in its own process group; no SuperLink: the node keeps retrying
    link_port, node_port = free_ports(2)
    (tmp_path / "flwr-home").mkdir()
    cmd = [sys.executable, "-m", "ffm", "deploy", "supernode", "--warm", "--partition-id", "0",
           "--num-partitions", "1", "--superlink", f"127.0.0.1:{link_port}", "--port", str(node_port)]
    log = tmp_path / "supernode.log"
    proc = start(cmd, deploy_env(tmp_path / "flwr-home"), log)
    try:
        up = ("serving ClientApp tasks", "Connection attempt failed")  # both have their signal handlers
        wait_for(lambda: all(line in log.read_text(errors="replace") for line in up),
                 "the worker serving and the node retrying", 120, proc, log)

        # Execute
        os.killpg(proc.pid, signal.SIGTERM)
        seconds = _seconds_until_group_gone(proc, timeout=5.0)
    finally:
        stop(proc)  # SIGKILL to whatever is left

    # Assert: every process gone within 5 s, the SuperNode and the worker each by its own graceful exit
    assert seconds is not None, f"processes left 5 s after SIGTERM:\n{tail(log)}"
    text = log.read_text(errors="replace")
    assert "SuperNode terminated gracefully" in text and "SIGTERM, stopping after 0 tasks" in text, tail(log)
    print(f"ffm deploy supernode --warm: group gone {seconds:.2f} s after SIGTERM")


# Shuts down like flower-supernode: its SIGTERM handler restores the default action (so a second SIGTERM kills
# it) and takes a moment to clean up. Each child reports its state in files of its own (two children printing
# to one log interleave their lines), named <state>-<k> under the folder it is given, holding its pid.
_CHILD = """
import os, pathlib, signal, sys, time
folder, k = pathlib.Path(sys.argv[1]), sys.argv[2]
def on_term(*_):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    (folder / f"cleaning-{k}").write_text(str(os.getpid()))
    time.sleep(1.0)
    (folder / f"clean-{k}").write_text(str(os.getpid()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(folder / f"ready-{k}").write_text(str(os.getpid()))
while True:
    time.sleep(0.1)
"""


def _children(folder: Path, state: str) -> list[int]:
    return [int(f.read_text()) for f in sorted(folder.glob(f"{state}-*")) if f.read_text().strip()]


@pytest.mark.slow
def test_a_process_pair_signalled_as_a_group_lets_each_child_finish_its_own_shutdown(tmp_path):
    # Prepare: ffm's pair runner (`ffm deploy supernode --warm`) over two children, in its own process group
    children = [[sys.executable, "-c", _CHILD, str(tmp_path), str(k)] for k in range(2)]
    pair = [sys.executable, "-c", "import sys; from pathlib import Path; from ffm.deploy_cli import _foreground_pair; "
            f"sys.exit(_foreground_pair({children!r}, Path({str(tmp_path)!r})))"]
    log = tmp_path / "pair.log"
    proc = start(pair, deploy_env(tmp_path), log)
    try:
        wait_for(lambda: len(_children(tmp_path, "ready")) == 2, "both children ready", 120, proc, log)

        # Execute: SIGTERM to every process, as a signal to their group; the children's first, so that the
        # runner's own finds both in their clean-up
        for pid in _children(tmp_path, "ready"):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: len(_children(tmp_path, "cleaning")) == 2, "both children cleaning up", 10, proc, log)
        os.kill(proc.pid, signal.SIGTERM)
        seconds = _seconds_until_group_gone(proc, timeout=5.0)
    finally:
        stop(proc)  # SIGKILL to whatever is left

    # Assert: no second SIGTERM from the runner cut a child's clean-up short, and all ended within 5 s
    assert [(tmp_path / f"clean-{k}").is_file() for k in range(2)] == [True, True], tail(log)
    assert seconds is not None, tail(log)
    assert proc.returncode == 130
