"""``ffm deploy superlink | supernode | run | split | certs | node-keys | register``: a job on a Flower
federation, step by step.

Each action runs one Flower process in the foreground (Ctrl-C ends it), with the environment and flags
that flwr 1.42 expects; ``docs/deploy.md`` walks through a whole federation.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ffm.modes import Runtime

if TYPE_CHECKING:
    from ffm.runtime.deploy import TlsFiles

__all__ = ["add_deploy_parser", "deploy_main"]


def _tls_args(parser: argparse.ArgumentParser, *, server: bool) -> None:
    parser.add_argument("--certs", metavar="DIR", help="TLS: folder with ca.pem" + (
        ", server.pem, server.key (from `ffm deploy certs`)" if server else " (the CA that signed the SuperLink)"))


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    from ffm.runtime.deploy import TlsFiles

    if not args.certs:
        return None
    folder = Path(args.certs).resolve()  # flwr requires absolute certificate paths
    return TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def add_deploy_parser(sub: argparse._SubParsersAction) -> None:
    """The ``deploy`` sub-command and its actions."""
    parser = sub.add_parser("deploy", help="run a job on a Flower federation (SuperLink + SuperNodes)")
    actions = parser.add_subparsers(dest="action", required=True)
    link = actions.add_parser("superlink", help="start the SuperLink (the server side; runs the ServerApp)")
    link.add_argument("--host", default="127.0.0.1", help="the public address SuperNodes dial (0.0.0.0: every "
                      "interface); only the Fleet API is served there")
    link.add_argument("--port", type=int, default=9092, help="the public Fleet API port (SuperNodes' --superlink)")
    link.add_argument("--control-port", type=int, default=9091, help="the SuperLink's own port on 127.0.0.1: the "
                      "Control API for `ffm deploy run` and `register` (the operator's; reach it remotely through "
                      "an SSH tunnel)")
    link.add_argument("--expose-control", action="store_true", help="UNSAFE: serve every API, the Control API "
                      "included, on --host:--port (flwr's own layout; any holder of ca.pem can then register "
                      "nodes and submit runs)")
    link.add_argument("--database", help="SQLite file for the SuperLink's state (default: in memory)")
    link.add_argument("--node-auth", action="store_true", help="admit only SuperNodes whose public key was "
                      "registered (`ffm deploy register`); needs --certs")
    _tls_args(link, server=True)
    node = actions.add_parser("supernode", help="start a SuperNode for one data owner (runs the ClientApp)")
    node.add_argument("--superlink", default="127.0.0.1:9092", help="the SuperLink's public HOST:PORT (its --port)")
    node.add_argument("--partition-id", type=int, required=True, help="which partition of the data this node owns")
    node.add_argument("--num-partitions", type=int, required=True, help="federation.num_clients of the job")
    node.add_argument("--port", type=int, default=9094, help="this node's Runtime API port (distinct per node)")
    node.add_argument("--data-path", help="this owner's folder from `ffm deploy split` (the only data it opens)")
    node.add_argument("--warm", action="store_true", help="run every ClientApp message in one long-lived ffm "
                      "worker (model and data stay loaded) instead of a fresh flwr-clientapp process per message")
    node.add_argument("--auth-key", metavar="FILE", help="this node's private key (from `ffm deploy node-keys`), "
                      "for a SuperLink started with --node-auth")
    node.add_argument("--trusted-keys", metavar="FILE", help="with --warm: YAML of the operators whose signed runs "
                      "this node runs (NAME: ssh-ed25519 ...); unsigned runs and any other signer are refused")
    node.add_argument("--state-dir", metavar="DIR", help="where this node keeps what it carries between rounds "
                      "(personal parts, control variates, DP-SGD's count), so that it survives a restart; never "
                      "sent (default: DATA_PATH-state beside the data folder, else FLWR_HOME/ffm-node-state/"
                      "partition-K)")
    node.add_argument("--policy", metavar="FILE", help="this data owner's policy (YAML, see docs/deploy.md): every "
                      "run is checked against it before it trains (default: DATA_PATH/policy.yaml if it exists)")
    _tls_args(node, server=False)
    run = actions.add_parser("run", help="submit a job (the same YAML as a simulation) and stream its logs")
    run.add_argument("config", nargs="?", help="YAML job file (none with --resume)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. federation.rounds=3")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run whose ServerApp ended early from its last "
                     "complete round (run where RUN_DIR is: the SuperLink's machine); the nodes that are up continue "
                     "from the state they keep on their own disk")
    run.add_argument("--superlink", default="127.0.0.1:9091", help="the SuperLink's Control API HOST:PORT (its "
                     "--control-port, on the operator's machine)")
    run.add_argument("--sign-key", metavar="FILE", help="sign the run with this key (from `ffm deploy "
                     "signing-keys`): nodes with --trusted-keys run only signed runs")
    run.add_argument("--signer", help="the signer's name the nodes' trusted keys know (default: the key file's "
                     "stem)")
    _tls_args(run, server=False)
    split = actions.add_parser("split", help="write each data owner's partition (and the server's test set) to disk")
    split.add_argument("config", help="YAML job file")
    split.add_argument("overrides", nargs="*", help="dotted overrides")
    split.add_argument("--out", required=True, help="folder for partition-<k>/ and server/")
    certs = actions.add_parser("certs", help="write a test CA and SuperLink certificate (for trying TLS)")
    certs.add_argument("directory", help="folder to write ca.pem, server.pem, server.key into")
    certs.add_argument("--host", action="append", help="IP or DNS name of the SuperLink (repeatable)")
    signing = actions.add_parser("signing-keys", help="write an operator's Ed25519 key pair for signing runs")
    signing.add_argument("directory", help="folder to write NAME.sign.key (private) and NAME.sign.pub into")
    signing.add_argument("--name", default="operator", help="the signer's name (default: operator)")
    keys = actions.add_parser("node-keys", help="write a SuperNode's key pair (for node authentication)")
    keys.add_argument("directory", help="folder to write NAME.key (private) and NAME.pub into")
    keys.add_argument("--name", default="supernode", help="file name stem (default: supernode)")
    register = actions.add_parser("register", help="admit a SuperNode to a --node-auth SuperLink by its public key")
    register.add_argument("public_key", help="the node's NAME.pub (from `ffm deploy node-keys`)")
    register.add_argument("--superlink", default="127.0.0.1:9091", help="the SuperLink's Control API HOST:PORT")
    register.add_argument("--name", help="a name for the node, shown by `flwr supernode list`")
    _tls_args(register, server=False)


def _foreground(cmd: list[str], flwr_home: Path) -> int:
    from ffm.runtime import deploy

    print("ffm: " + " ".join(cmd))
    return subprocess.call(cmd, env=deploy.deploy_env(flwr_home))


GRACE_S = 3.0  # after Ctrl-C / SIGTERM: how long the children may take to end on their own
TERM_S = 5.0  # then, after SIGTERM from this process: how long before SIGKILL


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> bool:
    """Wait (bounded) until every process has ended; True when they all have."""
    deadline = time.monotonic() + timeout
    while any(proc.poll() is None for proc in procs):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _end_all(procs: list[subprocess.Popen], *, grace: float) -> None:
    """End every process still running: ``grace`` seconds to end by itself, then SIGTERM, then SIGKILL."""
    if _wait_all(procs, grace):
        return
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    if _wait_all(procs, TERM_S):
        return
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TERM_S)


def _foreground_pair(cmds: list[list[str]], flwr_home: Path) -> int:
    """Run several processes together: when one ends (or on Ctrl-C / SIGTERM) the others are ended too.

    A signal only sets a flag: raised as KeyboardInterrupt it could land inside ``Popen`` (a child nobody ends)
    or inside the clean-up below. Ctrl-C, and a SIGTERM to the process group (``deploy.stop``, a service
    manager), reach every child as well, and a second SIGTERM kills ``flower-supernode`` in the middle of its
    graceful exit (flwr resets its handler): so the children get GRACE_S to end on their own, and only those
    still running then (this process alone was signalled) get SIGTERM from here, and SIGKILL after TERM_S.
    """
    import atexit
    import gc
    import signal

    from ffm.runtime import deploy

    # This process ends right after its children: skip the interpreter's cyclic garbage collection of every
    # module at exit (torch, transformers and flwr are loaded), ~1.5 s of CPU that delayed the end of the pair.
    atexit.register(gc.freeze)
    env = deploy.deploy_env(flwr_home)
    procs: list[subprocess.Popen] = []
    received: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for cmd in cmds:
            if received:
                break
            print("ffm: " + " ".join(cmd), flush=True)
            procs.append(subprocess.Popen(cmd, env=env))
        while not received and all(proc.poll() is None for proc in procs):
            time.sleep(0.1)
    finally:
        try:
            _end_all(procs, grace=GRACE_S if received else 0.0)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    if received:
        return 130
    return next(proc.returncode for proc in procs if proc.returncode is not None)


def _supernode(args: argparse.Namespace, home: Path) -> int:
    """A SuperNode (and, with --warm, its worker), with the owner's policy and trusted signers."""
    from ffm.errors import FfmError
    from ffm.runtime import deploy

    if args.trusted_keys and not args.warm:
        raise FfmError("--trusted-keys needs --warm: only ffm's warm worker runs ffm's installed ClientApp (a cold "
                       "node runs the code of each run's app bundle, which flwr 1.42 verifies only for Flower Hub "
                       "apps)")
    data_path = Path(args.data_path) if args.data_path else None
    policy = Path(args.policy) if args.policy else (data_path / "policy.yaml" if data_path else None)
    if args.policy and not policy.is_file():
        raise FfmError(f"--policy {args.policy}: no such file")
    state_dir = Path(args.state_dir) if args.state_dir else (
        data_path.parent / f"{data_path.name}-state" if data_path else home / "ffm-node-state" /
        f"partition-{args.partition_id}")
    cmd = deploy.supernode_command(superlink=args.superlink, partition_id=args.partition_id,
                                   num_partitions=args.num_partitions, runtime_port=args.port, tls=_tls(args),
                                   data_path=data_path, warm=args.warm,
                                   auth_key=Path(args.auth_key) if args.auth_key else None,
                                   policy=policy if policy is not None and policy.is_file() else None,
                                   state_dir=state_dir)
    if not args.warm:
        return _foreground(cmd, home)
    worker = deploy.warm_worker_command(args.port, trusted_keys=Path(args.trusted_keys) if args.trusted_keys
                                        else None)
    return _foreground_pair([cmd, worker], home)


def _submit(args: argparse.Namespace) -> int:
    from ffm.config import load_job  # every plug-in loads with it: only once it runs
    from ffm.errors import FfmError
    from ffm.runtime import deploy  # flwr and torch load only once an action runs

    if args.config and "=" in args.config and not Path(args.config).exists():
        args.overrides.insert(0, args.config)  # `--resume RUN_DIR key=value`: no file, only overrides
        args.config = None
    if args.resume:
        from ffm.config import job_to_resume

        job = job_to_resume(Path(args.resume).resolve(), args.overrides)
    elif args.config:
        job = load_job(args.config, args.overrides)
    else:
        raise FfmError("ffm deploy run needs a config file (e.g. configs/demo.yaml) or --resume RUN_DIR")
    job.runtime = Runtime.FLOWER
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # The ServerApp writes the run directory on the SuperLink's machine: make the path absolute.
    job.run_dir = str(Path(job.run_dir or f"runs/{Path(args.config).stem}-{job.mode}-{stamp}").resolve())
    if job.data.test_path:
        job.data.test_path = str(Path(job.data.test_path).resolve())  # read by the ServerApp, elsewhere
    with tempfile.TemporaryDirectory(prefix="ffm-deploy-") as tmp:
        home = Path(tmp)  # the flwr CLI's own FLWR_HOME: the user's ~/.flwr/config.toml stays untouched
        (home / "config.toml").write_text(deploy.flower_config(args.superlink, tls=_tls(args)))
        app = deploy.write_app(home / "app")
        signature = None
        if args.sign_key:  # the app bundle flwr builds from `app`, byte for byte, and the config nodes will see
            from ffm.runtime.signing import sign_run

            signer = args.signer or Path(args.sign_key).name.split(".")[0]
            signature = sign_run(Path(args.sign_key), signer, deploy.fab_bytes(app), deploy.node_run_config(job))
        (home / "job.toml").write_text(deploy.job_toml(job, signature))
        print(f"ffm: {job.federation.rounds} rounds on the federation at {args.superlink} -> {job.run_dir}")
        return _foreground(deploy.flwr_run_command(app, home / "job.toml"), home)


def _register(args: argparse.Namespace) -> int:
    """``flwr supernode register`` through a private flwr CLI config (the user's ~/.flwr stays untouched)."""
    from ffm.errors import FfmError
    from ffm.runtime import deploy

    if not Path(args.public_key).is_file():
        raise FfmError(f"no public key file {args.public_key}: the node's NAME.pub from `ffm deploy node-keys`")
    with tempfile.TemporaryDirectory(prefix="ffm-deploy-") as tmp:
        (Path(tmp) / "config.toml").write_text(deploy.flower_config(args.superlink, tls=_tls(args)))
        return _foreground(deploy.register_command(Path(args.public_key), name=args.name), Path(tmp))


def _split(args: argparse.Namespace) -> int:
    """Write the job's split as one folder per party: each SuperNode then gets only its own."""
    import datasets

    from ffm.config import load_job  # every plug-in loads with it: only once it runs
    from ffm.data import export_split, load_source, split_federated

    datasets.disable_progress_bars()
    job = load_job(args.config, args.overrides)
    data = split_federated(load_source(job.data), job.data, job.federation.num_clients, job.seed)
    folders = export_split(data, Path(args.out))
    print(f"ffm: wrote {len(folders) - 1} data owners' folders and the server's test set under {args.out}")
    print(f"ffm: give node k --data-path {Path(args.out) / 'partition-k'}; run with data.test_path={folders[-1]}")
    return 0


def deploy_main(args: argparse.Namespace) -> int:
    """Run one ``ffm deploy`` action; returns the exit code."""
    from ffm.runtime import deploy

    home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    if args.action == "superlink":
        db = Path(args.database) if args.database else None
        if args.expose_control:
            return _foreground(deploy.superlink_command(host=args.host, port=args.port, database=db,
                                                        tls=_tls(args), node_auth=args.node_auth), home)
        link = deploy.superlink_command(host="127.0.0.1", port=args.control_port, database=db, tls=_tls(args),
                                        node_auth=args.node_auth)
        gateway = deploy.gateway_command(listen=f"{args.host}:{args.port}", upstream=f"127.0.0.1:{args.control_port}",
                                         tls=_tls(args))
        return _foreground_pair([link, gateway], home)
    if args.action == "supernode":
        return _supernode(args, home)
    if args.action == "run":
        return _submit(args)
    if args.action == "split":
        return _split(args)
    if args.action == "register":
        return _register(args)
    from ffm.runtime.certs import make_node_keys, make_test_certificates

    if args.action == "signing-keys":
        from ffm.runtime.signing import make_signing_keys

        signing = make_signing_keys(Path(args.directory), args.name)
        print(f"ffm: wrote {signing.private_key} (keep it with the operator) and {signing.public_key} (for the "
              "data owners' --trusted-keys)")
        return 0
    if args.action == "node-keys":
        keys = make_node_keys(Path(args.directory), args.name)
        print(f"ffm: wrote {keys.private_key} (keep it on the node) and {keys.public_key} (for the SuperLink)")
        return 0

    files = make_test_certificates(Path(args.directory), tuple(args.host or ("127.0.0.1", "localhost")))
    print(f"ffm: wrote {files.ca_cert}, {files.server_cert}, {files.server_key}")
    return 0
