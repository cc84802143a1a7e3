"""Secure aggregation (SecAgg+, Bell et al. 2020) for Flower's Message API: a client mod and a strategy
wrapper. The server learns the (weighted) sum of the sampled clients' updates and nothing about any one."""

from ffm.secagg.mod import secagg_mod
from ffm.secagg.strategy import SecAggPlus

__all__ = ["SecAggPlus", "secagg_mod"]
