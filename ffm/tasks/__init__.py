"""Tasks: the objective and metric of a job."""

from ffm.tasks.classification import Examples, batches, evaluate, steps_per_epoch, tokenize, train_steps

__all__ = ["Examples", "batches", "evaluate", "steps_per_epoch", "tokenize", "train_steps"]
