"""Backbone loading and the trainable state that travels."""

from ffm.models.backbone import load_model, load_pretrained, load_tokenizer, resolve_model_path
from ffm.models.state import (
    check_update,
    load_trainable_state,
    split_personal,
    state_nbytes,
    trainable_state,
)

__all__ = [
    "check_update",
    "load_model",
    "load_pretrained",
    "load_tokenizer",
    "load_trainable_state",
    "resolve_model_path",
    "split_personal",
    "state_nbytes",
    "trainable_state",
]
