"""A job on a real Flower federation: command lines, the declared run config, and a SuperLink with three
SuperNodes as separate processes that ends where the in-process LocalGrid ends."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import tomli
import torch

from ffm.cli import main as ffm_main
from ffm.config import JobConfig, job_from_run_config, job_to_run_config
from ffm.errors import FfmError
from ffm.runtime import run_local
from ffm.runtime.deploy import (
    TlsFiles,
    app_pyproject,
    deploy_env,
    flower_config,
    flwr_run_command,
    job_toml,
    start,
    stop,
    superlink_command,
    supernode_command,
    write_app,
)

ROOT = Path(__file__).resolve().parents[1]


def _flat(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_pyproject_declares_every_job_key_with_its_default():
    declared = tomli.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]

    assert declared == app_pyproject()["tool"]["flwr"]["app"]["config"]
    assert _flat(declared) == job_to_run_config(JobConfig())


def test_job_toml_flattens_to_the_run_config_the_apps_read(job_factory):
    job = job_factory(method__targets=["query", "key", "value"], train__lr=0.02)

    flat = _flat(tomli.loads(job_toml(job)))

    assert flat == job_to_run_config(job)
    assert job_from_run_config(flat) == job


def test_superlink_command_is_insecure_without_certificates_and_tls_with_them(tmp_path):
    tls = TlsFiles(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")

    plain = superlink_command(host="127.0.0.1", port=9091, database=None, tls=None)
    secure = superlink_command(host="0.0.0.0", port=443, database=tmp_path / "s.db", tls=tls)

    assert plain[1:] == ["--insecure", "--host", "127.0.0.1", "--port", "9091",
                         "--disable-runtime-dependency-installation"]
    assert "--insecure" not in secure
    assert secure[secure.index("--ssl-certfile") + 1] == str(tls.server_cert)
    assert secure[secure.index("--ssl-keyfile") + 1] == str(tls.server_key)
    assert secure[secure.index("--database") + 1] == str(tmp_path / "s.db")


def test_supernode_command_names_its_partition_and_its_own_runtime_port(tmp_path):
    tls = TlsFiles(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")

    cmd = supernode_command(superlink="10.0.0.1:9091", partition_id=2, num_partitions=3, runtime_port=9200, tls=tls)

    assert cmd[cmd.index("--node-config") + 1] == "partition-id=2 num-partitions=3"
    assert cmd[cmd.index("--port") + 1] == "9200"
    assert cmd[cmd.index("--root-certificates") + 1] == str(tls.ca_cert)
    with pytest.raises(FfmError, match="partition-id 3"):
        supernode_command(superlink="x:1", partition_id=3, num_partitions=3, runtime_port=1, tls=None)


def test_flower_config_has_one_default_connection(tmp_path):
    insecure = tomli.loads(flower_config("127.0.0.1:9091", tls=None))
    secure = tomli.loads(flower_config("link:9091", tls=TlsFiles(tmp_path / "ca.pem", Path("a"), Path("b"))))

    assert insecure["superlink"] == {"default": "ffm", "ffm": {"address": "127.0.0.1:9091", "insecure": True}}
    assert secure["superlink"]["ffm"] == {"address": "link:9091", "root-certificates": str(tmp_path / "ca.pem")}


def test_ffm_run_with_runtime_flower_points_to_ffm_deploy(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text("runtime: flower\n")

    code = ffm_main(["run", str(config)])

    assert code == 2
    assert "ffm deploy run" in capsys.readouterr().err


# --- a real federation --------------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _wait_for_log(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"{log.name}: process exited early:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{log.name}: no '{text}' after {timeout} s:\n{log.read_text(errors='replace')[-2000:]}")


def _accuracies(run_dir: str) -> list[float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["test_accuracy"] for line in lines]


def _final(run_dir: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(run_dir) / "checkpoints" / "round-0002.pt", weights_only=True)["state"]


@pytest.mark.slow
def test_superlink_and_three_supernodes_end_where_the_local_grid_ends(job_factory, tmp_path):
    # Prepare: the same job twice (evaluation off: each ClientApp message costs a fresh process)
    overrides = {"federation__fraction_evaluate": 0.0}
    local = job_factory("local", **overrides)
    deployed = job_factory("deployed", runtime="flower", **overrides)
    run_local(local)
    link_port, *node_ports = _free_ports(4)
    env = deploy_env(tmp_path / "flwr-home")
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(flower_config(f"127.0.0.1:{link_port}", tls=None))
    (tmp_path / "job.toml").write_text(job_toml(deployed))
    app = write_app(tmp_path / "app")
    logs = tmp_path / "logs"
    procs: list[subprocess.Popen] = []
    try:
        cmd = superlink_command(host="127.0.0.1", port=link_port, database=tmp_path / "link.db", tls=None)
        procs.append(start(cmd, env, logs / "superlink.log"))
        for pid, port in enumerate(node_ports):
            cmd = supernode_command(superlink=f"127.0.0.1:{link_port}", partition_id=pid, num_partitions=3,
                                    runtime_port=port, tls=None)
            procs.append(start(cmd, env, logs / f"supernode-{pid}.log"))
        for pid in range(3):
            _wait_for_log(logs / f"supernode-{pid}.log", "SuperNode ID", procs[pid + 1], timeout=60)

        # Execute: flwr run streams the logs until the ServerApp finishes
        started = time.monotonic()
        result = subprocess.run(flwr_run_command(app, tmp_path / "job.toml"), env=env, capture_output=True,
                                text=True, timeout=150)
        seconds = time.monotonic() - started
    finally:
        for proc in reversed(procs):
            stop(proc)

    # Assert
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (Path(deployed.run_dir) / "summary.json").is_file(), result.stdout[-3000:]
    assert (Path(deployed.run_dir) / "final" / "adapter_model.safetensors").is_file()
    torch.testing.assert_close(_final(deployed.run_dir), _final(local.run_dir))
    assert _accuracies(deployed.run_dir) == pytest.approx(_accuracies(local.run_dir))
    print(f"federation: 2 rounds in {seconds:.1f} s (flwr run, including start of the ServerApp)")
