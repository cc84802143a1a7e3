"""The flwr 1.42 internals that ffm's warm ClientApp worker (:mod:`ffm.runtime.warm_worker`) is built on.

These are NOT public flwr API: they are what ``flwr-clientapp`` (``flwr/supernode/runtime/run_clientapp.py``)
and ``flower-superexec`` (``flwr/supercore/superexec/run_superexec.py``) use to talk to a SuperNode's Runtime
API. Every such import lives in this one module, so that a flwr upgrade that moves or changes them fails in one
place, loudly: ``tests/test_warm_worker.py::test_the_flwr_internals_the_worker_uses_are_where_it_expects`` checks
that each name still exists with the signature the worker calls it with. Nothing else in ffm imports these.
"""

from __future__ import annotations

from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

__all__ = [
    "AcquireTaskRequest",
    "Error",
    "ErrorCode",
    "HeartbeatSender",
    "RetryInvoker",
    "RuntimeHttpClient",
    "RuntimeTokenHttpInterceptor",
    "RuntimeVersionHttpInterceptor",
    "SendTaskHeartbeatRequest",
    "SubStatus",
    "TaskType",
    "exponential",
    "pull_task_input",
    "push_message",
    "push_task_output",
]
