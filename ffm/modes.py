"""What a job does with the parties' data (``mode``) and what carries its messages (``runtime``), as types.

Each mode's behaviour is answered here, in one place, by properties the rest of ffm reads instead of comparing
strings: who holds which data, how many nodes the Grid has, whether the server combines updates, whether each
party keeps a model of its own, whether anything trains at all.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Mode", "Runtime"]


class Mode(StrEnum):
    """``federated`` | ``centralized`` (all data pooled) | ``local`` (each party alone) | ``prompt_search``."""

    FEDERATED = "federated"
    CENTRALIZED = "centralized"
    LOCAL = "local"
    PROMPT_SEARCH = "prompt_search"

    @property
    def trains(self) -> bool:
        """Whether the job takes gradient steps (a prompt search only scores prompts)."""
        return self is not Mode.PROMPT_SEARCH

    @property
    def pools_data(self) -> bool:
        """One party holds the union of the parties' data: the privacy-violating upper bound."""
        return self is Mode.CENTRALIZED

    @property
    def aggregates(self) -> bool:
        """The server combines several parties' updates into one model (what secure aggregation protects)."""
        return self is Mode.FEDERATED

    @property
    def keeps_party_models(self) -> bool:
        """Every party trains a model of its own and the server never averages (the no-collaboration baseline)."""
        return self is Mode.LOCAL

    def nodes(self, num_clients: int) -> int:
        """Nodes of a simulated federation in this mode."""
        return 1 if self.pools_data else num_clients

    @classmethod
    def training(cls) -> tuple[Mode, ...]:
        """The modes that train (what ``ffm compare`` compares)."""
        return tuple(mode for mode in cls if mode.trains)


class Runtime(StrEnum):
    """``simulation`` (ffm's in-process LocalGrid) | ``flower`` (a SuperLink and SuperNodes: ``ffm deploy run``)."""

    SIMULATION = "simulation"
    FLOWER = "flower"
