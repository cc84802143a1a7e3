"""SuperNode authentication (flwr 1.42): only nodes whose public key the SuperLink's operator registered join.

Command lines and key files first, then a real TLS federation with authentication on: two registered warm
nodes train to the LocalGrid's result, and nodes with an unregistered key, or none, are refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from federation import checkpoint, federation, metrics, tail
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from ffm.cli import main as ffm_main
from ffm.errors import FfmError
from ffm.runtime import run_local
from ffm.runtime.certs import make_node_keys, make_test_certificates
from ffm.runtime.deploy import (
    TlsFiles,
    free_ports,
    register_command,
    start,
    superlink_command,
    supernode_command,
)


def _tls(folder: Path) -> TlsFiles:
    return TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def test_a_superlink_with_node_auth_enables_it_and_refuses_to_run_without_tls(tmp_path):
    cmd = superlink_command(host="0.0.0.0", port=9091, database=None, tls=_tls(tmp_path), node_auth=True)

    assert "--enable-supernode-auth" in cmd
    assert "--enable-supernode-auth" not in superlink_command(host="h", port=1, database=None, tls=_tls(tmp_path))
    with pytest.raises(FfmError, match="needs TLS"):
        superlink_command(host="h", port=1, database=None, tls=None, node_auth=True)


def test_a_supernode_with_an_auth_key_signs_with_it_by_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    cmd = supernode_command(superlink="link:9091", partition_id=0, num_partitions=2, runtime_port=9200,
                            tls=_tls(tmp_path), warm=True, auth_key=Path("keys/owner-0.key"))
    plain = supernode_command(superlink="link:9091", partition_id=0, num_partitions=2, runtime_port=9200, tls=None)

    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "keys" / "owner-0.key")
    assert "--auth-supernode-private-key" not in plain


def test_register_command_registers_the_public_key_on_ffms_connection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    cmd = register_command(Path("owner-0.pub"))
    named = register_command(tmp_path / "owner-0.pub", name="hospital-a")

    assert cmd[1:] == ["supernode", "register", str(tmp_path / "owner-0.pub"), "ffm"]
    assert named[1:] == [*cmd[1:], "--name", "hospital-a"]


def test_node_keys_are_the_p384_openssh_pair_flwr_loads_and_the_private_key_is_owner_only(tmp_path):
    keys = make_node_keys(tmp_path / "keys", "owner-0")

    # the SuperNode loads the private key as flower-supernode does; the CLI loads the public key as
    # `flwr supernode register` does, and both are the same key
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert try_load_public_key(keys.public_key) == public_key_to_bytes(private.public_key())
    assert keys.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    with pytest.raises(FfmError, match=r"owner-0\.key exists"):
        make_node_keys(tmp_path / "keys", "owner-0")


def test_ffm_deploy_node_keys_writes_a_pair_and_a_node_auth_superlink_without_certs_is_a_user_error(
        tmp_path, capsys):
    keys_code = ffm_main(["deploy", "node-keys", str(tmp_path), "--name", "owner-1"])
    link_code = ffm_main(["deploy", "superlink", "--node-auth"])
    register_code = ffm_main(["deploy", "register", str(tmp_path / "missing.pub")])

    assert keys_code == 0
    assert (tmp_path / "owner-1.key").is_file() and (tmp_path / "owner-1.pub").is_file()
    assert (link_code, register_code) == (2, 2)
    err = capsys.readouterr().err.splitlines()
    assert "needs TLS" in err[0] and "missing.pub" in err[1]


# --- a real federation --------------------------------------------------------------------------------------

NO_EVAL = {"federation__fraction_evaluate": 0.0, "federation__num_clients": 2}  # train only: one message
# exchange per round; two registered nodes


@pytest.mark.slow
def test_with_node_auth_registered_nodes_train_and_unregistered_ones_are_refused(job_factory, tmp_path):
    # Prepare: a TLS SuperLink with --enable-supernode-auth; two warm nodes whose keys were registered
    local = job_factory("local", **NO_EVAL)
    job = job_factory("deployed", runtime="flower", **NO_EVAL)
    run_local(local)
    tls = make_test_certificates(tmp_path / "certs")
    stranger = make_node_keys(tmp_path / "stranger", "node-x")

    with federation(tmp_path / "fed", num_nodes=2, tls=tls, warm=True, node_auth=True) as fed:
        # Execute: while the job runs, a node with an unregistered key and one with no key (flwr then makes
        # one up and asks the Fleet API to register it) try to join
        link = f"127.0.0.1:{fed.link_port}"
        strangers = [
            start(supernode_command(superlink=link, partition_id=0, num_partitions=2, runtime_port=port, tls=tls,
                                    auth_key=key), fed.env, fed.logs / f"stranger-{n}.log")
            for n, (port, key) in enumerate(zip(free_ports(2), [stranger.private_key, None], strict=True))
        ]
        fed.procs += strangers
        run = fed.submit(job)
        codes = [proc.wait(timeout=60) for proc in strangers]
        assert run.wait(timeout=120) == 0, tail(fed.logs / "flwr-run.log")

    # Assert: both strangers gave up (flwr's exit code 305, "no connection to the SuperLink"; the process
    # exits with 1), the job trained on exactly the registered nodes and ended where the LocalGrid ends
    logs = [(fed.logs / f"stranger-{n}.log").read_text(errors="replace") for n in range(2)]
    assert codes == [1, 1] and all("Exit Code: 305" in log for log in logs), logs
    assert "Failed to activate SuperNode" in logs[0], logs[0]
    assert "All SuperNodes must be registered" in logs[1], logs[1]
    assert "No SuperNode found with the given public key" in (fed.logs / "superlink.log").read_text(errors="replace")
    lines, state = metrics(job.run_dir), checkpoint(job.run_dir)
    local_lines, local_state = metrics(local.run_dir), checkpoint(local.run_dir)
    assert [sorted(c["node"] for c in line["clients"]) for line in lines[1:]] == [sorted(fed.registered)] * 2
    assert [line["test_accuracy"] for line in lines] == pytest.approx([line["test_accuracy"] for line in local_lines])
    torch.testing.assert_close(state, local_state)
