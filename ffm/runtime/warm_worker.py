"""A warm ClientApp worker: one long-lived process per SuperNode that runs every ClientApp task in-process.

With flwr 1.42 a SuperNode starts a fresh ``flwr-clientapp`` process for every message, which imports torch and
rebuilds ffm's model and data each time. Started with ``--isolation process``, a SuperNode starts no
``flower-superexec`` and waits for an outside executor to poll its Runtime API instead. This worker is that
executor: it acquires the node's ``flwr-clientapp`` tasks one by one and runs each with ``ffm.client:app`` in
this process, so ffm's per-process :func:`ffm.workspace.workspace_for` cache keeps the backbone and the
tokenized data loaded from one message to the next.

Per task it does what ``flwr-clientapp`` does (flwr's own functions, see :mod:`ffm.flwr_internals`):
pull the message and context, run the ClientApp, push the reply, push the task output (the context and
COMPLETED / FAILED). It differs only where a process that lives for one task and one that serves many must:

- no FAB is installed or loaded: the worker is ffm-specific and runs the installed ``ffm.client:app``;
- an exception in the ClientApp becomes an error reply and a FAILED task, and the worker serves on;
- a refused heartbeat (the SuperNode gave the task up) aborts that task, not the process (flwr's heartbeat
  raises SIGINT in the whole process), and HTTP 401/403 fail the task instead of ending the process (flwr's
  HTTP retry invoker sends SIGINT on 401): the worker retries only transport errors;
- SIGTERM / SIGINT abort the task in progress (pushing a FAILED output, as ``flwr-clientapp``'s exit handler
  does) and end the worker cleanly.

``python -m ffm.runtime.warm_worker --runtime-api 127.0.0.1:9094 --insecure`` (or ``--root-certificates CA.pem``
when the SuperNode serves its Runtime API with TLS); ``ffm deploy supernode --warm`` starts the pair.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from flwr.app import Context, Message

from ffm import __version__
from ffm import flwr_internals as fi
from ffm.runtime.signing import load_trusted, verify_run

__all__ = ["TaskResult", "WarmWorker", "main"]

LOG = logging.getLogger("ffm.warm_worker")
POLL_INTERVAL_S = 0.2  # between AcquireTask calls while idle (flwr's SuperExec waits 1 s)
TASK_RETRY_S = 60.0  # how long a task's Runtime API calls retry transport errors
UNREACHABLE_S = 120.0  # the worker ends once the SuperNode's Runtime API is unreachable this long


class WorkerStopped(BaseException):
    """SIGTERM / SIGINT: stop serving (a BaseException, so that no ``except Exception`` swallows it)."""


class TaskCancelled(BaseException):
    """The SuperNode refused the task's heartbeat: the task is no longer this worker's."""


class RunRefused(RuntimeError):
    """The run is not one this node runs (another app, another ffm version, or not signed by a trusted key)."""


def app_mismatch(fab: bytes) -> str | None:
    """Why a FAB is not an app of the ffm this worker serves (its components, its ffm version), or None."""
    import io
    import tomllib
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            project = tomllib.loads(archive.read("pyproject.toml").decode())
    except (KeyError, zipfile.BadZipFile, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return "the run's app bundle has no readable pyproject.toml"
    tool = project.get("tool", {})
    components = tool.get("flwr", {}).get("app", {}).get("components", {})
    if components.get("clientapp") != "ffm.client:app":
        return f"the run's app names the ClientApp {components.get('clientapp')!r}; this node runs ffm.client:app only"
    version = tool.get("ffm", {}).get("version")
    if version != __version__:
        return f"the run's app is for ffm {version}; this node serves ffm {__version__}"
    return None


@dataclass(frozen=True)
class TaskResult:
    """What one ClientApp task ended with (its reply, or why it failed)."""

    task_id: int
    message_type: str  # "train", "evaluate", ... ("" when the message never arrived)
    status: str  # flwr's SubStatus: "completed" or "failed"
    details: str
    seconds: float


def _retry_invoker(max_time: float | None) -> fi.RetryInvoker:
    """Retry transport errors only; HTTP errors (401, 403, 404...) surface as exceptions of this one task."""
    return fi.RetryInvoker(lambda: fi.exponential(max_delay=5), (httpx.TransportError,), max_tries=None,
                           max_time=max_time)


class WarmWorker:
    """Serves the ClientApp tasks of one SuperNode's Runtime API, all in this process."""

    def __init__(
        self,
        runtime_api: str,
        *,
        root_certificates: bytes | None = None,
        insecure: bool = True,
        app: Callable[..., Message] | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        unreachable_s: float = UNREACHABLE_S,
        trusted: dict[str, Any] | None = None,
    ) -> None:
        if insecure and root_certificates is not None:
            raise ValueError("root certificates given for an insecure connection")
        if app is None:
            from ffm.client import app as ffm_app  # imports torch and transformers once, before the first task

            app = ffm_app
        self.runtime_api = runtime_api
        self.insecure = insecure
        self.root_certificates = root_certificates
        self.app = app
        self.poll_interval = poll_interval
        self.unreachable_s = unreachable_s
        self.served = 0
        self.trusted = trusted  # signers whose runs this node runs (None: any run of ffm's own app)
        self._in_task = False
        self._stopping = False
        self._cancelled = threading.Event()

    # --- Runtime API clients ----------------------------------------------------------------------------------

    def _client(self, interceptors: Sequence[Any], invoker: fi.RetryInvoker) -> fi.RuntimeHttpClient:
        return fi.RuntimeHttpClient.from_server_address(
            server_address=self.runtime_api,
            insecure=self.insecure,
            root_certificates=self.root_certificates,
            interceptors=list(interceptors),
            retry_invoker=invoker,
        )

    def _heartbeat_fn(self, client: fi.RuntimeHttpClient) -> Callable[[], bool]:
        """flwr's task heartbeat, except that a refusal cancels this task rather than SIGINT-ing the process."""
        request = fi.SendTaskHeartbeatRequest()

        def beat() -> bool:
            try:
                accepted = client.SendTaskHeartbeat(request).success
            except httpx.TransportError:
                return False  # HeartbeatSender retries with backoff
            except httpx.HTTPStatusError as err:
                if err.response.status_code in (httpx.codes.SERVICE_UNAVAILABLE, httpx.codes.GATEWAY_TIMEOUT):
                    return False
                accepted = False  # 401 / 403: the token is no longer valid
            if not accepted and self._in_task:
                self._cancelled.set()
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)  # see _on_cancel
            return True

        return beat

    # --- one task -----------------------------------------------------------------------------------------------

    def run_task(self, token: str, task_id: int) -> TaskResult:
        """Run one acquired task: pull its input, run the ClientApp, push the reply and the task's output."""
        invoker = _retry_invoker(TASK_RETRY_S)
        client = self._client([fi.RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                               fi.RuntimeTokenHttpInterceptor(token)], invoker)
        heartbeat = fi.HeartbeatSender(self._heartbeat_fn(client))
        message: Message | None = None
        reply: Message | None = None
        context: Context | None = None
        status, details = fi.SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        started = pulled = ran = time.monotonic()
        self._cancelled.clear()
        self._in_task = True
        try:
            heartbeat.start()
            try:
                message, context, run, fab = fi.pull_task_input(client)
                pulled = time.monotonic()
                refused = self.refusal(fab.content, context.run_config)
                if refused:
                    LOG.error("ffm warm worker: refused run %d (task %d): %s", run.run_id, task_id, refused)
                    raise RunRefused(f"ffm node: run refused: {refused}")
                reply = self.app(message=message, context=context)
                ran = time.monotonic()
                status, details = fi.SubStatus.COMPLETED, ""
            except Exception as ex:  # the error goes back to the ServerApp, as flwr-clientapp does
                details = str(type(ex)) + ":<'" + str(ex) + "'>"  # flwr-clientapp's format
                LOG.error("task %d: the ClientApp raised %s", task_id, details, exc_info=ex)
                if message is not None:
                    error = fi.Error(code=fi.ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details)
                    reply = Message(error, reply_to=message)
            if reply is not None and context is not None:
                try:
                    fi.push_message(client, reply, context)
                except Exception as ex:
                    LOG.error("task %d: pushing the reply failed", task_id, exc_info=ex)
                    status, details = fi.SubStatus.FAILED, f"pushing the reply failed: {ex}"
        except TaskCancelled:
            status, details = fi.SubStatus.FAILED, "the SuperNode gave the task up (heartbeat refused)"
            LOG.warning("task %d: %s", task_id, details)
        except WorkerStopped:
            status, details = fi.SubStatus.FAILED, "the ffm warm worker was stopped"
            raise
        finally:
            self._in_task = False
            if heartbeat.is_running:
                heartbeat.stop()
            invoker.max_tries = 1  # as flwr-clientapp's exit handler: one try for the final output
            fi.push_task_output(client=client, context=context, sub_status=status, details=details)
            client.close()
            self.served += 1
        kind = message.metadata.message_type if message is not None else ""
        result = TaskResult(task_id, kind, status, details, time.monotonic() - started)
        LOG.info("ffm warm worker pid=%d: task %d (%s) %s in %.2f s (input %.2f s, ClientApp %.2f s); "
                 "tasks served by this process: %d", os.getpid(), task_id, kind or "?", status, result.seconds,
                 pulled - started, ran - pulled, self.served)
        return result

    def refusal(self, fab: bytes, run_config: dict[str, Any]) -> str | None:
        """Why a run must not run here: its app is not the ffm this worker serves, or (with trusted keys) it is
        not signed by a trusted operator as it is; None when it may run."""
        problem = app_mismatch(fab)
        if problem is None and self.trusted is not None:
            problem = verify_run(fab, run_config, self.trusted)
        return problem

    # --- the loop ------------------------------------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: object) -> None:
        if not self._stopping:  # once: a second signal must not interrupt the shutdown itself
            self._stopping = True
            raise WorkerStopped(signal.Signals(signum).name)

    def _on_cancel(self, _signum: int, _frame: object) -> None:
        if self._in_task and self._cancelled.is_set():
            raise TaskCancelled()

    def serve(self, max_tasks: int | None = None) -> int:
        """Acquire and run ClientApp tasks until SIGTERM / SIGINT (or ``max_tasks``); returns an exit code."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_stop)
            signal.signal(signal.SIGUSR1, self._on_cancel)
        poller = self._client([fi.RuntimeVersionHttpInterceptor(component_name="SuperExec")],
                              _retry_invoker(self.unreachable_s))
        request = fi.AcquireTaskRequest(supported_task_types=[fi.TaskType.CLIENT_APP.value])
        LOG.info("ffm warm worker pid=%d: serving ClientApp tasks of the Runtime API at %s (%s)", os.getpid(),
                 self.runtime_api, "insecure" if self.insecure else "TLS")
        try:
            while max_tasks is None or self.served < max_tasks:
                res = poller.AcquireTask(request)
                if res.HasField("task") and res.token:
                    self.run_task(res.token, res.task.task_id)
                    continue  # the node may hold more messages: ask again at once
                time.sleep(self.poll_interval)
        except WorkerStopped as stop:
            LOG.info("ffm warm worker pid=%d: %s, stopping after %d tasks", os.getpid(), stop, self.served)
        except (httpx.TransportError, httpx.HTTPStatusError) as err:
            LOG.error("ffm warm worker pid=%d: the Runtime API at %s failed: %r", os.getpid(), self.runtime_api,
                      err)
            return 1
        finally:
            poller.close()
        return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ffm.runtime.warm_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api", required=True, metavar="HOST:PORT",
                        help="the SuperNode's Runtime API (its --port; the SuperNode runs with --isolation process)")
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="plain HTTP (the SuperNode serves its Runtime API "
                     "without --ssl-certfile)")
    tls.add_argument("--root-certificates", metavar="FILE", help="PEM CA that signed the Runtime API's certificate")
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL_S, help="seconds between polls")
    parser.add_argument("--trusted-keys", metavar="FILE", help="YAML of the signers whose runs this node runs "
                        "(NAME: ssh-ed25519 ...); every other run is refused")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ffm.runtime.warm_worker``: serve a SuperNode's ClientApp tasks until stopped."""
    args = _parse(argv)
    # On SIGTERM the worker stops within milliseconds, but the interpreter's teardown then garbage-collects
    # every module (torch, transformers, flwr): ~1.5 s of CPU, longer on a busy machine, before the process is
    # gone. Frozen objects are left to the OS instead; atexit handlers and the flushing of files still run.
    atexit.register(gc.freeze)
    # force: a library imported above (Opacus) may have configured the root logger already
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll
    certificates = Path(args.root_certificates).read_bytes() if args.root_certificates else None
    trusted = load_trusted(Path(args.trusted_keys)) if args.trusted_keys else None
    worker = WarmWorker(args.runtime_api, root_certificates=certificates, insecure=args.insecure,
                        poll_interval=args.poll_interval, trusted=trusted)
    return worker.serve()


if __name__ == "__main__":
    raise SystemExit(main())
