"""A data owner's own policy, enforced on its own node: what a federation may do with this node's data.

The owner writes a small YAML file next to its data (``DATA_PATH/policy.yaml``, or ``ffm deploy supernode
--policy FILE``), for example::

    require_secure_aggregation: true     # the server may see only a sum of the updates
    max_epsilon: 8                       # DP required; this node's epsilon over all runs at most 8
    allowed_tasks: [text_classification]
    allowed_methods: [lora]
    allowed_modes: [federated]
    allow_prompt_search: false           # no scoring of prompts on my data
    max_rounds: 50
    max_local_steps: 100
    min_clients_per_round: 5             # my update is never one of fewer than 5

Before a run touches the data, the node's ClientApp checks the run's config against every rule and refuses a
run that breaks one: its reply is an error naming the rule, the log says the same, nothing trains. The epsilon
the node's runs spend is kept in a ledger beside the policy (``POLICY.ledger.json``, written atomically): a
run is charged its planned epsilon when it is first accepted, and refused when the runs so far plus this one
would exceed ``max_epsilon`` (basic composition: conservative). No anchor lets a data owner bound this on its
own machine; here the owner does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ffm.errors import ConfigError, FfmError
from ffm.federation import clients_per_round
from ffm.privacy import epsilon
from ffm.privacy.dp_sgd import dp_sgd_epsilon
from ffm.settings import Job, build, items, option, require

__all__ = ["POLICY_PATH", "NodePolicy", "PolicyViolation", "check_run", "load_policy", "violations"]

POLICY_PATH = "policy-path"  # a node's config: where its owner's policy is


class PolicyViolation(FfmError):
    """A run breaks a rule of this node's policy: the node refuses it (its reply is an error naming the rule)."""


@dataclass
class NodePolicy:
    """The rules a data owner sets for every run on its node (empty lists and 0 allow anything)."""

    require_secure_aggregation: bool = option(False, "the server may see only the sum of the updates")
    max_epsilon: float = option(0.0, "> 0: DP is required, and this node's epsilon over all its runs stays at most "
                                "this (client-level DP's, else DP-SGD's)")
    max_delta: float = option(1e-5, "with max_epsilon: the largest delta a run may use")
    allowed_tasks: list[str] = items("task.name values allowed (empty: any)")
    allowed_methods: list[str] = items("method.name values allowed (empty: any)")
    allowed_modes: list[str] = items("modes allowed (empty: any)")
    allow_prompt_search: bool = option(True, "whether prompts may be scored on this node's data")
    max_rounds: int = option(0, "the most rounds a run may ask (0: any)")
    max_local_steps: int = option(0, "the most local steps per round (0: any)")
    min_clients_per_round: int = option(0, "the fewest clients whose updates a round combines with this node's")

    def __post_init__(self) -> None:
        require(self.max_epsilon >= 0 and self.max_rounds >= 0 and self.max_local_steps >= 0
                and self.min_clients_per_round >= 0, "policy: the limits must be >= 0")


def load_policy(path: Path) -> NodePolicy:
    """The policy in ``path``; an unknown rule or a bad value names itself (so a typo never loosens a rule)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"node policy {path} cannot be read ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"node policy {path} must be a mapping of rules")
    return build(NodePolicy, raw, "policy.")


def _planned_epsilon(job: Job, sample_rate: Callable[[], float]) -> float:
    """The epsilon this run spends on this node: client-level DP's over all rounds, else DP-SGD's over all its
    local steps (every round, as if sampled in each: an upper bound), else infinity."""
    if job.privacy.clipping != "none":
        return epsilon(job, job.federation.rounds)
    if job.privacy.dp_sgd:
        steps = job.train.local_steps * job.federation.rounds
        return dp_sgd_epsilon(steps, sample_rate(), job.privacy.sgd_noise_multiplier, job.privacy.delta)
    return float("inf")


def violations(policy: NodePolicy, job: Job) -> list[str]:
    """Every rule (but the epsilon budget) that ``job`` breaks, as 'rule: why'."""
    out = []
    if policy.require_secure_aggregation and not job.privacy.secure_aggregation:
        out.append("require_secure_aggregation: the run does not use privacy.secure_aggregation")
    for rule, allowed, value in (("allowed_tasks", policy.allowed_tasks, job.task.name),
                                 ("allowed_methods", policy.allowed_methods, job.method.name),
                                 ("allowed_modes", policy.allowed_modes, str(job.mode))):
        if allowed and value not in allowed:
            out.append(f"{rule}: the run uses {value}; this node allows {', '.join(allowed)}")
    if not policy.allow_prompt_search and not job.mode.trains:
        out.append("allow_prompt_search: the run scores prompts on this node's data")
    if policy.max_rounds and job.federation.rounds > policy.max_rounds:
        out.append(f"max_rounds: the run asks {job.federation.rounds} rounds; this node allows {policy.max_rounds}")
    if policy.max_local_steps and job.train.local_steps != 0 and job.train.local_steps > policy.max_local_steps:
        out.append(f"max_local_steps: the run asks {job.train.local_steps}; this node allows "
                   f"{policy.max_local_steps}")
    if policy.max_local_steps and job.train.local_steps == 0:
        out.append("max_local_steps: the run trains whole epochs (train.local_steps=0), whose steps this node "
                   "cannot bound")
    per_round = clients_per_round(job.federation)
    if policy.min_clients_per_round and per_round < policy.min_clients_per_round:
        out.append(f"min_clients_per_round: the run combines {per_round} clients a round; this node needs "
                   f"{policy.min_clients_per_round}")
    if policy.max_epsilon and job.privacy.delta > policy.max_delta:
        out.append(f"max_delta: the run's privacy.delta={job.privacy.delta} is above {policy.max_delta}")
    return out


def _ledger_path(policy_path: Path) -> Path:
    return policy_path.with_name(policy_path.name + ".ledger.json")


def check_run(policy_path: Path, job: Job, run_id: int, sample_rate: Callable[[], float]) -> None:
    """Refuse (PolicyViolation) a run that breaks the node's policy; charge an accepted DP run's epsilon."""
    policy = load_policy(policy_path)
    broken = violations(policy, job)
    if broken:
        raise PolicyViolation("node policy refuses the run: " + "; ".join(broken))
    if not policy.max_epsilon:
        return
    planned = _planned_epsilon(job, sample_rate)
    if planned == float("inf"):
        raise PolicyViolation("node policy refuses the run: max_epsilon: the run uses no differential privacy "
                              "(privacy.clipping or privacy.dp_sgd)")
    ledger_path = _ledger_path(policy_path)
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    if str(run_id) in ledger:
        return  # accepted and charged when its first message arrived
    spent = sum(ledger.values())
    if spent + planned > policy.max_epsilon:
        raise PolicyViolation(f"node policy refuses the run: max_epsilon: the runs so far spent {spent:.3g} and "
                              f"this one plans {planned:.3g}, above {policy.max_epsilon:g}")
    ledger[str(run_id)] = planned
    tmp = ledger_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ledger, indent=2))
    os.replace(tmp, ledger_path)
