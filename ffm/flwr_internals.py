"""The flwr 1.42 internals that ffm builds on: every import of a non-public flwr name lives in this module.

These are NOT public flwr API: the LocalGrid's process identity and message ids, the clipping mod's config key,
SecAgg+'s Shamir secret sharing, the protobuf serde the LocalGrid's worker processes exchange messages with,
and the Runtime API calls of the warm ClientApp worker (what ``flwr-clientapp``,
``flwr/supernode/runtime/run_clientapp.py``, and ``flower-superexec``, ``flwr/supercore/superexec/run_superexec.py``,
use to talk to a SuperNode). A flwr upgrade that moves or changes them fails in this one place, loudly:
``tests/test_warm_worker.py::test_the_flwr_internals_the_worker_uses_are_where_it_expects`` checks that each name
still exists with the signature ffm calls it with. Nothing else in ffm imports flwr internals.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=E0611
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

__all__ = [
    "SERVER_NODE_ID",
    "AcquireTaskRequest",
    "Error",
    "ErrorCode",
    "HeartbeatSender",
    "KEY_CLIPPING_NORM",
    "ProtoContext",
    "ProtoMessage",
    "RetryInvoker",
    "Run",
    "RuntimeHttpClient",
    "RuntimeTokenHttpInterceptor",
    "RuntimeVersionHttpInterceptor",
    "SendTaskHeartbeatRequest",
    "SubStatus",
    "TaskIdentity",
    "TaskType",
    "build_fab_from_disk",
    "combine_shares",
    "create_shares",
    "context_from_proto",
    "context_to_proto",
    "exponential",
    "message_from_proto",
    "message_to_proto",
    "pull_task_input",
    "push_message",
    "push_task_output",
    "set_message_id",
    "set_task_identity",
]

SERVER_NODE_ID = 0


def set_task_identity(run_id: int) -> None:
    """Give this process the identity flwr stamps into every Message it builds.

    ``Message(...)`` reads ``TaskIdentity`` (which a SuperLink sets for its ServerApp process). Outside a
    SuperLink nobody sets it, so the LocalGrid does, through this one function.
    """
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SERVER_NODE_ID
    TaskIdentity.task_id = 0


def set_message_id(msg: Message, message_id: str) -> None:
    """Stamp a message id as a SuperLink does on receipt (metadata has no public setter; InMemoryGrid
    writes the same private field)."""
    msg.metadata.__dict__["_message_id"] = message_id
