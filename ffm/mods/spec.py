"""The client-mod seam: a Flower mod built from the job, the keys it adds to ``client``, and when the job
switches it on by itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from flwr.clientapp.typing import Mod

from ffm.registry import Registry
from ffm.settings import Job

__all__ = ["MODS", "ModSpec"]

Place = Literal["outer", "inner"]


@dataclass(frozen=True)
class ModSpec:
    """A registered client mod.

    ``build(job)`` returns the Flower mod; ``config`` is the dataclass of its keys in the ``client`` section
    (None: it has none); ``implied(job)`` says where the job itself puts it (outermost: it sees the final reply,
    innermost: right around the ClientApp), or None; ``switched_on_by`` names the key that switches on a mod a
    user may not name in ``client.mods`` (its own mechanism adds it, with what it needs).
    """

    build: Callable[[Job], Mod]
    config: type | None = None
    implied: Callable[[Job], Place | None] | None = None
    switched_on_by: str = ""


MODS: Registry[ModSpec] = Registry("client.mods")
"""Client mods by name: one file with a ``ModSpec`` plus one ``MODS.register`` line."""
