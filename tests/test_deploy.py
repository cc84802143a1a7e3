"""A job on a real Flower federation: command lines, the declared run config, and a SuperLink with three
SuperNodes as separate processes that ends where the in-process LocalGrid ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli
import torch
from federation import checkpoint, federation, flat, metrics

from ffm.cli import main as ffm_main
from ffm.config import JobConfig, job_from_run_config, job_to_run_config
from ffm.errors import FfmError
from ffm.run_dir import RunDirectory
from ffm.runtime import run_local
from ffm.runtime.deploy import (
    TlsFiles,
    app_pyproject,
    flower_config,
    job_toml,
    superlink_command,
    supernode_command,
)

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_every_key_of_every_task_method_and_strategy_with_its_default():
    declared = tomli.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]

    assert declared == app_pyproject()["tool"]["flwr"]["app"]["config"]
    assert flat(declared).items() >= job_to_run_config(JobConfig()).items()
    # a run_config holding every declared key (as a SuperLink passes it) still reads as the default job
    assert job_from_run_config(flat(declared)) == JobConfig()


def test_job_toml_flattens_to_the_run_config_the_apps_read(job_factory):
    job = job_factory(method__targets=["query", "key", "value"], train__lr=0.02)

    flattened = flat(tomli.loads(job_toml(job)))

    assert flattened == job_to_run_config(job)
    assert job_from_run_config(flattened) == job


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


def test_supernode_command_gives_the_node_its_own_state_dir(tmp_path):
    cmd = supernode_command(superlink="x:1", partition_id=0, num_partitions=2, runtime_port=1, tls=None,
                            data_path=tmp_path / "partition-0", state_dir=tmp_path / "partition-0-state")

    assert f'state-dir="{tmp_path / "partition-0-state"}"' in cmd[cmd.index("--node-config") + 1]


def test_deploy_run_resume_submits_the_runs_own_config_marked_resume(job_factory, tmp_path, monkeypatch):
    import ffm.deploy_cli as deploy_cli

    job = job_factory("interrupted", runtime="flower", federation__rounds=4)
    RunDirectory(job.run_dir).start(job)
    submitted = {}
    monkeypatch.setattr(deploy_cli, "_foreground", lambda cmd, home: submitted.update(
        toml=tomli.loads((Path(home) / "job.toml").read_text())) or 0)

    code = ffm_main(["deploy", "run", "--resume", job.run_dir, "federation.rounds=6", "--superlink", "127.0.0.1:1"])

    config = submitted["toml"]
    assert code == 0 and config["resume"] is True and config["run_dir"] == str(Path(job.run_dir).resolve())
    assert config["federation"]["rounds"] == 6 and config["model"]["name"] == job.model.name


def test_deploy_run_without_a_config_or_resume_is_a_one_line_error(capsys):
    assert ffm_main(["deploy", "run", "--superlink", "127.0.0.1:1"]) == 2
    assert "a config file" in capsys.readouterr().err


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
# Each message to a SuperNode starts a fresh flwr-clientapp process (~7 s of imports on 2 cores), so these
# tests turn evaluation off and keep to 2 rounds; each takes about a minute.


# evaluation off: every ClientApp message costs a fresh process
NO_EVAL = {"federation__fraction_evaluate": 0.0}


@pytest.mark.slow
def test_secure_aggregation_runs_unchanged_on_a_loopback_federation_of_two_supernodes(job_factory, tmp_path):
    # Prepare: the plain LocalGrid run is the reference; one round (4 messages per node: setup, share-keys,
    # collect, unmask; each a fresh ClientApp process, the node's secrets kept in its Context.state between)
    one_round = {**NO_EVAL, "federation__rounds": 1, "federation__num_clients": 2}  # 2: the fewest it accepts
    local = job_factory("local", **one_round)
    job = job_factory("deployed", runtime="flower", privacy__secure_aggregation=True, **one_round)
    run_local(local)

    # Execute
    with federation(tmp_path / "fed", num_nodes=2, warm=True) as fed:  # warm: 4 messages a node, ~7 s saved each
        fed.run(job, timeout=240)

    # Assert: the securely aggregated state equals FedAvg's within half a quantization step
    bound = 0.5 * job.privacy.secagg_bound / 2**job.privacy.secagg_bits + 1e-6
    secure, plain = checkpoint(job.run_dir, 1), checkpoint(local.run_dir, 1)
    assert max(float((secure[k].double() - plain[k].double()).abs().max()) for k in plain) <= bound
    summary = json.loads((Path(job.run_dir) / "summary.json").read_text())
    assert summary["secure_aggregation"]["rounds"]["1"]["survivors"] == 2


@pytest.mark.slow
def test_a_continual_stream_with_churn_and_replay_runs_unchanged_on_supernodes(job_factory, tmp_path):
    # Prepare: 2 stages of 1 round; party 2 joins at stage 2 (the server asks the nodes' partition ids with a
    # QUERY, as a real Grid shows none); replay keeps each node's buffer in its Context.state between messages.
    # Warm SuperNodes: the stream needs nothing of the cold path (tested above), and they save ~7 s a message
    stream = {**NO_EVAL, "continual__kind": "domain_incremental", "continual__stages": 2,
              "continual__parties": ["0-1", "0-2"], "continual__approach": "replay", "continual__replay_size": 4}
    local = job_factory("local", **stream)
    job = job_factory("deployed", runtime="flower", **stream)
    run_local(local)

    # Execute
    with federation(tmp_path / "fed", warm=True) as fed:
        fed.run(job, timeout=200)

    # Assert: the LocalGrid's states and accuracy matrix; party 2 trained in stage 2 only
    torch.testing.assert_close(checkpoint(job.run_dir), checkpoint(local.run_dir))
    lines = metrics(job.run_dir)
    assert [sorted(c["partition_id"] for c in line["clients"]) for line in lines[1:]] == [[0, 1], [0, 1, 2]]
    deployed, reference = (json.loads((Path(j.run_dir) / "summary.json").read_text())["continual"]
                           for j in (job, local))
    assert deployed["R"] == [pytest.approx(row) for row in reference["R"]]
