"""Who may run what, on a real Flower federation (SuperLink, ffm's gateway and SuperNodes as processes on
loopback): with ffm's layout a holder of ca.pem cannot register a node or submit a run through the public
address, the operator can; a node that trusts only the operator's key runs its signed run and refuses an
unsigned one and a stranger's, with one clear log line. The first test's run is also the suite's check that a
TLS federation of cold SuperNodes (a fresh ClientApp process per message) ends where the LocalGrid ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from federation import checkpoint, comparable, federation, metrics, tail

from ffm.runtime import run_local
from ffm.runtime.certs import make_node_keys, make_test_certificates
from ffm.runtime.deploy import flower_config
from ffm.runtime.signing import make_signing_keys

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("federation")]

ONE_ROUND = {"federation__rounds": 1, "federation__num_clients": 2, "federation__fraction_evaluate": 0.0,
             "federation__max_failed_rounds": 1}


def _register_through(fed, public_key: Path, port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ffm", "deploy", "register", str(public_key), "--superlink",
                           f"127.0.0.1:{port}", "--certs", str(fed.tls.ca_cert.parent)], env=fed.env, text=True,
                          capture_output=True, timeout=120)


def test_through_the_public_address_a_ca_holder_cannot_register_or_submit_and_the_operator_can(
        tmp_path, job_factory):
    certs = make_test_certificates(tmp_path / "certs", ("127.0.0.1", "localhost"))
    job = job_factory("deployed", runtime="flower", **ONE_ROUND)
    local = job_factory("local", **ONE_ROUND)
    run_local(local)

    with federation(tmp_path / "fed", num_nodes=2, tls=certs, node_auth=True, gateway=True) as fed:
        sybil = make_node_keys(tmp_path / "sybil", "sybil")
        refused = _register_through(fed, sybil.public_key, fed.public_port)
        home = Path(fed.env["FLWR_HOME"])  # the flwr CLI's connection: first the public address, then the operator's
        (home / "config.toml").write_text(flower_config(f"127.0.0.1:{fed.public_port}", tls=certs))
        code_public = fed.submit(job, log="public-run.log").wait(timeout=180)
        (home / "config.toml").write_text(flower_config(f"127.0.0.1:{fed.link_port}", tls=certs))
        seconds = fed.run(job, timeout=600)
        accepted = _register_through(fed, make_node_keys(tmp_path / "late", "late").public_key, fed.link_port)

    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert code_public != 0, tail(fed.logs / "public-run.log")
    assert "refused POST /v1/control/register-node" in (fed.logs / "gateway.log").read_text()
    assert "refused POST /v1/control/start-run" in (fed.logs / "gateway.log").read_text()
    assert accepted.returncode == 0 and "registered" in accepted.stdout, accepted.stdout + accepted.stderr
    summary = json.loads((Path(job.run_dir) / "summary.json").read_text())
    assert summary["rounds"] == 1 and not summary["failed_rounds"] and seconds > 0
    # the operator's run, over TLS on cold nodes, ends with the LocalGrid's state and every metric but times
    torch.testing.assert_close(checkpoint(job.run_dir, 1), checkpoint(local.run_dir, 1))
    assert comparable(metrics(job.run_dir)) == pytest.approx(comparable(metrics(local.run_dir)))


def test_a_node_that_trusts_the_operator_runs_its_signed_run_and_refuses_unsigned_and_strangers(
        tmp_path, job_factory):
    operator, stranger = make_signing_keys(tmp_path, "operator"), make_signing_keys(tmp_path, "stranger")
    trusted = tmp_path / "trusted.yaml"
    trusted.write_text(f"operator: {operator.public_key.read_text().strip()}\n")
    runs = {name: job_factory(name, runtime="flower", **ONE_ROUND) for name in ("unsigned", "strange", "signed")}

    with federation(tmp_path / "fed", num_nodes=2, warm=True, trusted=trusted) as fed:
        codes = {"unsigned": fed.submit(runs["unsigned"], log="unsigned.log").wait(timeout=300),
                 "strange": fed.submit(runs["strange"], sign=(stranger.private_key, "stranger"),
                                       log="strange.log").wait(timeout=300),
                 "signed": fed.submit(runs["signed"], sign=(operator.private_key, "operator"),
                                      log="signed.log").wait(timeout=300)}
        node_log = (fed.logs / "supernode-0.log").read_text()

    assert codes["signed"] == 0, tail(fed.logs / "signed.log")
    signed = json.loads((Path(runs["signed"].run_dir) / "summary.json").read_text())
    assert signed["rounds"] == 1 and not signed["failed_rounds"]
    for name in ("unsigned", "strange"):
        summary = Path(runs[name].run_dir) / "summary.json"
        assert codes[name] != 0 or not summary.is_file() or json.loads(summary.read_text())["failed_rounds"]
    assert "refused run" in node_log and "the run is not signed" in node_log
    assert "signed by 'stranger', whom this node does not trust" in node_log
