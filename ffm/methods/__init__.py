"""Methods, registered by ``method.name`` (the one place a method name is matched)."""

from ffm.methods.base import METHODS, ClientRound, Method, MethodConfig, PartyAdjustment
from ffm.methods.bitfit import BitFit
from ffm.methods.full import Full
from ffm.methods.ia3 import Ia3
from ffm.methods.kseed import KSeed
from ffm.methods.lora import Lora
from ffm.methods.offsite import Offsite
from ffm.methods.prompts import PrefixTuning, PromptTuning, PTuning

__all__ = ["METHODS", "ClientRound", "Method", "MethodConfig", "PartyAdjustment", "build_method"]

METHODS.register("lora", Lora)
METHODS.register("full", Full)
METHODS.register("ia3", Ia3)
METHODS.register("bitfit", BitFit)
METHODS.register("prompt_tuning", PromptTuning)
METHODS.register("prefix_tuning", PrefixTuning)
METHODS.register("p_tuning", PTuning)
METHODS.register("fedkseed", KSeed)
METHODS.register("offsite", Offsite)


def build_method(cfg: MethodConfig) -> Method:
    """The method object for a job's ``method`` section (its capabilities, and what it trains)."""
    return METHODS[cfg.name](cfg)
