"""Who may run what: the Control API behind the operator's door, runs signed by the operator, and each data
owner's policy enforced on its own node (fast, in-process specifications; the real federation is in
tests/test_deploy_security.py)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import httpx
import pytest
import tomli_w
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ffm.config import load_job
from ffm.errors import ConfigError
from ffm.node_policy import PolicyViolation, check_run, load_policy, violations
from ffm.runtime import run_local
from ffm.runtime.deploy import app_pyproject
from ffm.runtime.gateway import gateway_app
from ffm.runtime.signing import SIGNATURE_KEY, load_trusted, make_signing_keys, sign_run, verify_run
from ffm.runtime.warm_worker import app_mismatch


def _policy(tmp_path: Path, **rules: object) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps(rules))
    return path


@pytest.mark.parametrize(
    ("rules", "overrides", "broken"),
    [
        ({"require_secure_aggregation": True}, [], "require_secure_aggregation"),
        ({"allowed_tasks": ["masked_lm"]}, [], "allowed_tasks"),
        ({"allowed_methods": ["lora"]}, ["method.name=full"], "allowed_methods"),
        ({"allowed_modes": ["federated"]}, ["mode=centralized"], "allowed_modes"),
        ({"max_rounds": 3}, ["federation.rounds=10"], "max_rounds"),
        ({"max_local_steps": 5}, ["train.local_steps=20"], "max_local_steps"),
        ({"min_clients_per_round": 8}, ["federation.fraction_train=0.5"], "min_clients_per_round"),
        ({"max_epsilon": 8, "max_delta": 1e-6}, ["privacy.clipping=fixed"], "max_delta"),
    ],
)
def test_each_rule_of_a_node_policy_names_itself_when_a_run_breaks_it(tmp_path, rules, overrides, broken):
    policy = load_policy(_policy(tmp_path, **rules))

    found = violations(policy, load_job(None, overrides))

    assert [v.split(":")[0] for v in found] == [broken]
    assert violations(load_policy(_policy(tmp_path)), load_job(None, overrides)) == []  # an empty policy allows


def test_a_typo_in_a_policy_is_an_error_not_a_looser_rule(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'policy\.max_round'"):
        load_policy(_policy(tmp_path, max_round=3))


def test_a_node_refuses_a_run_its_policy_forbids_and_the_others_train(job_factory, tmp_path):
    job = job_factory("policed")
    path = _policy(tmp_path, max_rounds=1)

    summary, _ = run_local(job, node_configs={0: {"policy-path": str(path)}})

    lines = [json.loads(x) for x in (Path(job.run_dir) / "metrics.jsonl").read_text().splitlines()]
    for line in lines[1:]:
        assert [c["partition_id"] for c in line["clients"]] != [] and 0 not in [c["partition_id"]
                                                                                for c in line["clients"]]
        assert any("max_rounds" in r["reason"] for r in line["rejected"])
    assert summary["rounds"] == 2


def test_the_epsilon_ledger_charges_accepted_runs_and_refuses_one_that_would_exceed_the_budget(tmp_path):
    path = _policy(tmp_path, max_epsilon=30)  # a run of 5 rounds at z = 1 over every client plans 12.3
    dp = load_job(None, ["privacy.clipping=fixed", "privacy.noise_multiplier=1.0", "federation.rounds=5"])
    plain = load_job(None, [])

    check_run(path, dp, run_id=1, sample_rate=lambda: 0.1)
    check_run(path, dp, run_id=1, sample_rate=lambda: 0.1)  # the same run: charged once

    ledger = json.loads(path.with_name("policy.yaml.ledger.json").read_text())
    assert list(ledger) == ["1"] and 12 < ledger["1"] < 13
    with pytest.raises(PolicyViolation, match="max_epsilon: the runs so far spent"):
        for run_id in range(2, 10):
            check_run(path, dp, run_id=run_id, sample_rate=lambda: 0.1)
    with pytest.raises(PolicyViolation, match="uses no differential privacy"):
        check_run(path, plain, run_id=99, sample_rate=lambda: 0.1)
    assert len(json.loads(path.with_name("policy.yaml.ledger.json").read_text())) == 2  # 24.6 spent; 36.9 > 30


def _fab(components: dict[str, str], version: str | None) -> bytes:
    project = app_pyproject()
    project["tool"]["flwr"]["app"]["components"] = components
    if version is None:
        del project["tool"]["ffm"]
    else:
        project["tool"]["ffm"]["version"] = version
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", tomli_w.dumps(project))
    return buffer.getvalue()


def test_a_signed_run_verifies_and_an_unsigned_strangers_or_changed_one_does_not(tmp_path):
    operator, stranger = make_signing_keys(tmp_path, "operator"), make_signing_keys(tmp_path, "stranger")
    trusted_file = tmp_path / "trusted.yaml"
    trusted_file.write_text(f"operator: {operator.public_key.read_text().strip()}\n")
    trusted = load_trusted(trusted_file)
    fab = _fab({"serverapp": "ffm.server:app", "clientapp": "ffm.client:app"}, "0.1.0")
    config = {"mode": "federated", "federation.rounds": 3}

    signed = {**config, **sign_run(operator.private_key, "operator", fab, config)}
    by_stranger = {**config, **sign_run(stranger.private_key, "stranger", fab, config)}
    impostor = {**config, **sign_run(stranger.private_key, "operator", fab, config)}

    assert verify_run(fab, signed, trusted) is None
    assert "not signed" in verify_run(fab, config, trusted)
    assert "'stranger', whom this node does not trust" in verify_run(fab, by_stranger, trusted)
    assert "does not match" in verify_run(fab, impostor, trusted)
    assert "does not match" in verify_run(fab, {**signed, "federation.rounds": 1000}, trusted)
    assert "does not match" in verify_run(fab + b"x", signed, trusted)
    assert signed[SIGNATURE_KEY] != by_stranger[SIGNATURE_KEY]


def test_a_warm_node_runs_only_the_app_of_the_ffm_it_serves():
    ours = {"serverapp": "ffm.server:app", "clientapp": "ffm.client:app"}

    assert app_mismatch(_fab(ours, "0.1.0")) is None
    assert "runs ffm.client:app only" in app_mismatch(_fab({**ours, "clientapp": "evil:app"}, "0.1.0"))
    assert "for ffm 0.0.9" in app_mismatch(_fab(ours, "0.0.9"))
    assert "for ffm None" in app_mismatch(_fab(ours, None))
    assert "no readable pyproject.toml" in app_mismatch(b"not a zip")


def test_the_gateway_forwards_the_fleet_api_and_refuses_the_control_api():
    seen = []

    async def superlink(request):
        seen.append(request.url.path)
        return PlainTextResponse(f"ok {request.headers.get('x-flwr-node')} {(await request.body()).decode()}")

    upstream = Starlette(routes=[Route("/{path:path}", superlink, methods=["POST"])])
    app = gateway_app("superlink.local:9091", transport=httpx.ASGITransport(app=upstream))

    with TestClient(app) as client:
        fleet = client.post("/v1/fleet/pull-messages", content=b"body", headers={"x-flwr-node": "7"})
        control = client.post("/v1/control/register-node", content=b"pub")
        runtime = client.post("/v1/runtime/pull-messages")

    assert fleet.status_code == 200 and fleet.text == "ok 7 body"
    assert control.status_code == runtime.status_code == 403 and "Control API" in control.text
    assert seen == ["/v1/fleet/pull-messages"]


def test_while_the_superlink_is_down_the_gateway_answers_502_which_supernodes_retry():
    from flwr.supercore.retry.http_retry import _RETRYABLE_STATUS_CODES

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    app = gateway_app("superlink.local:9091", transport=httpx.MockTransport(unreachable))

    with TestClient(app) as client:
        reply = client.post("/v1/fleet/pull-messages", content=b"body")

    assert reply.status_code == 502 and reply.status_code in _RETRYABLE_STATUS_CODES
