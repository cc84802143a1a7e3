"""Methods, registered by ``method.name`` (the one place a method name is matched)."""

from ffm.config import MethodConfig
from ffm.methods.base import Method
from ffm.methods.full import Full
from ffm.methods.lora import Lora
from ffm.registry import Registry

__all__ = ["METHODS", "Method", "build_method"]

METHODS: Registry[type[Method]] = Registry("method.name")
METHODS.register("lora", Lora)
METHODS.register("full", Full)


def build_method(cfg: MethodConfig) -> Method:
    """The method object for a job's ``method`` section."""
    return METHODS[cfg.name](cfg)
