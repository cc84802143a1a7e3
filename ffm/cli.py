"""``ffm run CONFIG [key=value ...] [--resume RUN_DIR]``, ``ffm compare ...``, ``ffm audit RUN_DIR``,
``ffm deploy ...`` and ``ffm config``: the user's entry points.

User errors (FfmError) print one line and exit with code 2; nothing already written is removed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ffm.compare_cli import add_compare_parser, compare_main
from ffm.deploy_cli import add_deploy_parser, deploy_main
from ffm.errors import FfmError
from ffm.modes import Runtime

if TYPE_CHECKING:
    from ffm.settings import Job

__all__ = ["main"]


def _key_table() -> str:
    from ffm.config import describe_keys  # builds the job from every plug-in: only when the table is shown

    rows = describe_keys()
    width = max(len(key) for key, *_ in rows)
    return "\n".join(f"  {key:<{width}}  {kind:<9} {default:<14} {text}" for key, kind, default, text in rows)


class _AnyOrderParser(argparse.ArgumentParser):
    """A parser whose commands take their options and positionals in any order.

    Plain argparse fills ``config`` and ``overrides`` from the first run of positionals, so a ``key=value`` after
    an option (``ffm deploy run CONFIG --superlink ADDR federation.rounds=2``) was an "unrecognized argument".
    Every parser without sub-commands (``run``, ``config``, each ``deploy`` action: sub-parsers take their parent's
    class) parses with ``parse_known_intermixed_args`` instead; that one cannot hold sub-commands itself (Python
    3.11 raises TypeError), so the parsers above them parse as usual and hand the rest on.
    """

    _intermixing = False
    lists_keys = False  # `ffm run --help` ends with every config key, built only when the help is shown

    def format_help(self) -> str:
        if self.lists_keys and not self.epilog:
            self.epilog = "config keys (set in the YAML or as key=value):\n" + _key_table()
        return super().format_help()

    def parse_known_args(self, args=None, namespace=None):
        if self._subparsers is not None or self._intermixing:  # the intermixed parse's own two passes land here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _parser() -> argparse.ArgumentParser:
    parser = _AnyOrderParser(prog="ffm", description="Federated foundation models on Flower.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run a job (federated, centralized or local baseline)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.lists_keys = True

    run.add_argument("config", nargs="?", help="YAML job file (optional with --resume)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=5e-4 federation.rounds=3")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last complete round")
    run.add_argument("-v", "--verbose", action="store_true", help="show Flower's own log lines and library warnings")
    run.add_argument("--audit", type=int, default=0, metavar="EXAMPLES",
                     help="after the run, a membership-inference audit on this many members (as `ffm audit`)")
    run.add_argument("--audit-shadows", type=int, default=0, help="LiRA shadow models of that audit")
    add_deploy_parser(sub)
    add_compare_parser(sub)
    audit = sub.add_parser("audit", help="membership-inference audit of a finished run (into its summary.json)")
    audit.add_argument("run_dir", help="the run directory to attack")
    audit.add_argument("--examples", type=int, default=200, help="member targets (as many non-members)")
    audit.add_argument("--shadows", type=int, default=0, help="shadow models for LiRA (0 = loss attack only)")
    audit.add_argument("--shadow-steps", type=int, default=0, help="steps per shadow (0 = the run's budget)")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--canaries", action="store_true", help="instead: the one-run audit of a run with "
                       "privacy.canaries (an epsilon lower bound beside the accountant's upper bound)")
    config = sub.add_parser("config", help="list every config key, or print a resolved job")
    config.add_argument("config", nargs="?", help="YAML job file to resolve and print")
    config.add_argument("overrides", nargs="*", help="dotted overrides")
    return parser


def _split_positionals(args: argparse.Namespace) -> None:
    """``ffm run a=b`` (no file) parses 'a=b' as the config; move it to the overrides."""
    if args.config and "=" in args.config and not Path(args.config).exists():
        args.overrides.insert(0, args.config)
        args.config = None


def _resolve(args: argparse.Namespace) -> Job:
    from ffm.config import job_to_resume, load_job  # torch and every plug-in: once it runs

    if args.resume:
        return job_to_resume(args.resume, args.overrides)
    if args.config is None:
        raise FfmError("ffm run needs a config file (e.g. configs/demo.yaml) or --resume RUN_DIR")
    job = load_job(args.config, args.overrides)
    if not job.run_dir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        job.run_dir = str(Path("runs") / f"{Path(args.config).stem}-{job.mode}-{stamp}")
    return job


def _quiet_libraries(verbose: bool) -> None:
    import datasets
    import flwr.serverapp  # noqa: F401 - importing flwr sets its logger's level: set ours after it
    import transformers

    if not verbose:
        # Libraries' deprecation and resampling notices would bury ffm's own one-line messages.
        warnings.simplefilter("ignore")
    # Before the job is built: importing Opacus (a plug-in's) calls logging.basicConfig, which would win otherwise.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _print_search_summary(summary: dict) -> None:
    template, words = summary["selected"]
    print(f"\nprompt search finished: {summary['rounds']} rounds, {summary['candidates_scored']} candidates scored "
          f"by clients, in {summary['wall_time_s']:.0f} s")
    print(f"  selected       {template!r} with label words {words}")
    print(f"  test accuracy  selected {summary['final_test_accuracy']:.4f}  first candidate "
          f"{summary['initial_test_accuracy']:.4f}  central choice {summary['central_test_accuracy'] or 0:.4f}")
    if summary["epsilon"] is not None:
        print(f"  privacy        epsilon {summary['epsilon']:.2f} at delta {summary['delta']}")
    print(f"  traffic        {summary['bytes_up']:,} bytes up (scores only), {summary['bytes_down']:,} bytes down")
    print(f"  run directory  {summary['run_dir']}  (metrics.jsonl, summary.json)")


def _print_summary(summary: dict) -> None:
    if summary["mode"] == "prompt_search":
        _print_search_summary(summary)
        return
    metric = summary["primary_metric"]
    mb_up, mb_down = summary["bytes_up"] / 1e6, summary["bytes_down"] / 1e6
    final, best = summary[f"final_test_{metric}"], summary[f"best_test_{metric}"]
    print(f"\n{summary['mode']} run finished: {summary['rounds']} rounds in {summary['wall_time_s']:.0f} s")
    print(f"  test {metric:<10} final {final:.4f}  best {best:.4f}")
    print(f"  trainable      {summary['trainable_params']:,} of {summary['total_params']:,} parameters travel")
    print(f"  traffic        {mb_up:.2f} MB up, {mb_down:.2f} MB down; {summary['rejected_updates']} updates rejected")
    print(f"  run directory  {summary['run_dir']}  (metrics.jsonl, checkpoints/, final/, summary.json)")


def _at_least(value: int, low: int, flag: str, meaning: str) -> None:
    if value < low:
        raise FfmError(f"{flag} must be {meaning}, got {value}")


def _run(args: argparse.Namespace) -> int:
    _split_positionals(args)
    _at_least(args.audit, 0, "--audit", "0 (no audit) or the number of members to attack")
    _at_least(args.audit_shadows, 0, "--audit-shadows", "0 (the loss attack only) or a number of shadow models")
    _quiet_libraries(args.verbose)
    job = _resolve(args)
    if job.runtime is Runtime.FLOWER:
        raise FfmError(
            "runtime: flower runs on a Flower federation; start a SuperLink and SuperNodes, then "
            f"`ffm deploy run {args.config or 'CONFIG'}` (see docs/deploy.md)"
        )
    from ffm.runtime import run_local  # heavy imports (torch, flwr) only once the input is known good

    print(f"ffm: {job.mode} job, {job.federation.num_clients} clients, {job.federation.rounds} rounds -> {job.run_dir}")
    summary, _ = run_local(job)
    _print_summary(summary)
    if args.audit > 0 and job.mode.trains:  # in this process: the workspace is already loaded
        from ffm.audit import audit_run

        result = audit_run(job.run_dir, examples=args.audit, shadows=args.audit_shadows)
        print(f"  audit          membership-inference AUC {result['mia_auc']:.4f} (audit.json)")
    return 0


def _audit(args: argparse.Namespace) -> int:
    _at_least(args.examples, 1, "--examples", "at least 1 (the members to attack, as many non-members)")
    _at_least(args.shadows, 0, "--shadows", "0 (the loss attack only) or a number of shadow models")
    _at_least(args.shadow_steps, 0, "--shadow-steps", "0 (the run's budget) or a number of steps")
    _quiet_libraries(False)
    if args.canaries:
        from ffm.audit import canary_audit_run

        found = canary_audit_run(args.run_dir)
        print(f"one-run audit of {args.run_dir}: {found['correct']} of {found['guesses']} guesses right about "
              f"{found['canaries']} canaries ({found['present']} present)")
        print(f"  epsilon >= {found['epsilon_lower_bound']:.3f} at 95% confidence (delta {found['delta']:g}); "
              f"the accountant's epsilon: {found['epsilon_accountant']}")
        print(f"  written to {args.run_dir}/audit.json and summary.json (canary_audit)")
        return 0
    from ffm.audit import audit_run

    result = audit_run(args.run_dir, examples=args.examples, shadows=args.shadows, shadow_steps=args.shadow_steps,
                       seed=args.seed)
    print(f"membership inference on {args.run_dir}: {result['members']} members vs {result['nonmembers']} "
          "non-members")
    for name in ("loss_attack", "lira"):
        if result[name]:
            print(f"  {name:<12} AUC {result[name]['auc']:.4f}  TPR at 1% FPR {result[name]['tpr_at_1pct_fpr']:.4f}")
    print(f"  written to {args.run_dir}/audit.json and summary.json (audit)")
    return 0


def _config(args: argparse.Namespace) -> int:
    _split_positionals(args)
    if args.config is None and not args.overrides:
        print("config keys (set in a YAML job file or as key=value):\n" + _key_table())
        return 0
    import yaml

    from ffm.config import job_to_dict, load_job

    print(yaml.safe_dump(job_to_dict(load_job(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; a user error prints one line and returns 2."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the user typed, for reports
    try:
        if args.command == "deploy":
            return deploy_main(args)
        if args.command == "compare":
            return compare_main(args)
        if args.command == "audit":
            return _audit(args)
        return _run(args) if args.command == "run" else _config(args)
    except FfmError as exc:
        print(f"ffm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ffm: interrupted; continue with --resume RUN_DIR", file=sys.stderr)
        return 130
