"""The ``federation`` section: how many parties, how many rounds, who takes part in each, and how the
in-process LocalGrid spreads a round's clients over worker processes."""

from __future__ import annotations

from dataclasses import dataclass

from ffm.settings import option, require

__all__ = ["FederationConfig", "clients_per_round"]


@dataclass
class FederationConfig:
    """The parties and the rounds; what a round tolerates before it fails."""

    num_clients: int = option(10, "number of clients (data owners)")
    rounds: int = option(5, "federated rounds")
    fraction_train: float = option(1.0, "share of clients sampled to train each round, in (0, 1]")
    sampling: str = option("fixed", "how a round's training clients are drawn: fixed (Flower's: int(fraction_train "
                           "x clients) of them, without replacement) or poisson (each client independently with "
                           "probability fraction_train, as the Poisson privacy analysis assumes)",
                           choices=("fixed", "poisson"))
    fraction_evaluate: float = option(1.0, "share of clients that evaluate on their validation split, in [0, 1]")
    min_train_clients: int = option(
        1, "fewest usable updates a round needs; with fewer it fails: logged, global state unchanged"
    )
    max_failed_rounds: int = option(3, "consecutive failed rounds after which the run stops with an error")
    workers: int = option(0, "the LocalGrid's worker processes: a round's clients train in parallel, sharing one "
                          "copy of the frozen base (forked copy-on-write); 1 = one client at a time in this "
                          "process; 0 = as many as pay off here (one per core for a model of 5M+ parameters, "
                          "within free memory)")
    worker_threads: int = option(0, "torch threads per worker process (0 = the machine's cores / workers)")
    evaluate_every: int = option(1, "evaluate the global model (test set, and the clients' validation splits) every "
                                 "this many rounds; the initial model and the last round always")
    round_timeout: float = option(3600.0, "seconds a round waits for its replies (train, then evaluate): a node "
                                  "that has not answered by then counts as a failed reply of that round, and is not "
                                  "asked to evaluate it (on a Flower federation; the LocalGrid's nodes always answer)")
    streaming: bool = option(True, "aggregate from a running sum as replies arrive, for rules whose aggregate "
                             "depends on the replies only through their weighted mean (FedAvg, FedProx, FedOpt, "
                             "FedAvgM): memory does not grow with the clients per round")
    ema: float = option(0.0, "decay of an exponential moving average of the global models, in [0, 1) (0 = none): "
                        "the server evaluates it too (test_ema_*) and saves it (final/ema); the clients go on "
                        "from each round's own model. Post-processing of the released models, so free under DP: "
                        "it averages away part of each round's noise")

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, "federation.num_clients must be at least 1")
        require(self.rounds >= 1, "federation.rounds must be at least 1")
        require(0.0 < self.fraction_train <= 1.0,
                f"federation.fraction_train must be in (0, 1], got {self.fraction_train}")
        require(0.0 <= self.fraction_evaluate <= 1.0, "federation.fraction_evaluate must be in [0, 1]")
        require(self.min_train_clients >= 1, "federation.min_train_clients must be at least 1")
        require(self.max_failed_rounds >= 1, "federation.max_failed_rounds must be at least 1")
        require(self.round_timeout > 0, "federation.round_timeout must be > 0 seconds")
        require(self.evaluate_every >= 1, "federation.evaluate_every must be at least 1")
        require(0.0 <= self.ema < 1.0, f"federation.ema must be in [0, 1) (0 = no average), got {self.ema}")
        require(self.workers >= 0 and self.worker_threads >= 0, "federation.workers must be >= 0 (0 = as many as "
                "pay off) and federation.worker_threads >= 0 (0 = cores / workers)")


def clients_per_round(fed: FederationConfig) -> int:
    """Clients Flower samples to train each round (its FedAvg takes int(fraction x available), at least 1)."""
    return max(1, int(fed.num_clients * fed.fraction_train))
