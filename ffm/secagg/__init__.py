"""Secure aggregation (SecAgg+, Bell et al. 2020) for Flower's Message API: a client mod and a strategy
wrapper. The server learns the (weighted) sum of the sampled clients' updates and nothing about any one.

Registered here as the privacy mechanism ``secure_aggregation`` (its keys join the ``privacy`` section).
"""

from ffm.privacy import PRIVACY
from ffm.secagg.mechanism import SECURE_AGGREGATION, SecAggConfig
from ffm.secagg.mod import secagg_mod
from ffm.secagg.strategy import SecAggPlus

__all__ = ["SECURE_AGGREGATION", "SecAggConfig", "SecAggPlus", "secagg_mod"]

PRIVACY.register("secure_aggregation", SECURE_AGGREGATION)
