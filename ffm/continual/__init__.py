"""Continual federated learning: a stream of stages, and what keeps a model from forgetting the earlier ones.

``config`` holds the ``continual`` section; ``stream`` cuts the data into stages; ``streams`` is the stream the
workspace, ClientApp and ServerApp consume (registered below as the kinds ``class_incremental`` and
``domain_incremental``); ``head`` grows a class-incremental head; ``replay`` and ``ewc`` are the client-side
approaches (kept in the node state, never sent); ``local`` applies them in a client's round; ``stages`` is the
server's loop over stages; ``matrix`` the accuracy matrix and its summary figures; ``checks`` the rules the
stream sets for the rest of the job.
"""

from ffm.continual.checks import check_stream
from ffm.continual.config import ContinualConfig
from ffm.continual.streams import ContinualStream, open_continual
from ffm.data import STREAMS
from ffm.settings import CHECKS, MOVED, SECTIONS, Plain, SectionSpec

__all__ = ["ContinualConfig", "ContinualStream"]

STREAMS.register("class_incremental", open_continual)
STREAMS.register("domain_incremental", open_continual)
SECTIONS.register("continual", SectionSpec(Plain(ContinualConfig), position=40))
CHECKS.register("continual_stream", check_stream)
MOVED["continual.method"] = "continual.approach"  # it stood beside method.name and meant something else
