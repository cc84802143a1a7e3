"""Continual federated learning: a stream of stages, and what keeps a model from forgetting the earlier ones.

``stream`` cuts the data into stages; ``head`` grows a class-incremental head; ``replay`` and ``ewc`` are the
client-side methods (kept in the node state, never sent); ``local`` applies them in a client's round;
``stages`` is the server's loop over stages; ``matrix`` the accuracy matrix and its summary figures.
"""
