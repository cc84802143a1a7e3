"""Backbone loading, method application, and the trainable state that travels."""

from ffm.models.backbone import load_classifier, load_tokenizer, resolve_model_path
from ffm.models.methods import METHODS, apply_method
from ffm.models.state import check_update, load_trainable_state, state_nbytes, trainable_state

__all__ = [
    "METHODS",
    "apply_method",
    "check_update",
    "load_classifier",
    "load_tokenizer",
    "load_trainable_state",
    "resolve_model_path",
    "state_nbytes",
    "trainable_state",
]
