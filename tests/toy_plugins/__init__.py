"""Three toy plug-ins, one file each, registered by one line each (in :func:`register`): a strategy, a client
mod and a method. ``tests/test_plugins.py`` runs a job with each and edits nothing in ``ffm/``."""

from ffm.methods import METHODS
from ffm.mods import MODS
from ffm.strategies import STRATEGIES
from toy_plugins.counter_mod import COUNTER
from toy_plugins.damped_strategy import DAMPED
from toy_plugins.head_only_method import HeadOnly


def register() -> None:
    """The registry lines: one per plug-in."""
    STRATEGIES.register("toy_damped", DAMPED)
    MODS.register("toy_counter", COUNTER)
    METHODS.register("toy_head_only", HeadOnly)


def unregister() -> None:
    """Leave the registries as they were for the tests after."""
    STRATEGIES.unregister("toy_damped")
    MODS.unregister("toy_counter")
    METHODS.unregister("toy_head_only")
