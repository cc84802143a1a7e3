"""Tasks: the objective and metric of a job, registered by ``task.name`` (the one place a task name is matched)."""

from ffm.tasks.base import TASKS, Task, TaskConfig, ensure_pad_token
from ffm.tasks.causal_lm import CausalLM
from ffm.tasks.classification import TextClassification
from ffm.tasks.contrastive import ImageTextContrastive
from ffm.tasks.examples import Examples, batches, step_batches, steps_per_epoch
from ffm.tasks.image_classification import ImageClassification
from ffm.tasks.instruction import Instruction
from ffm.tasks.masked_lm import MaskedLM
from ffm.tasks.preference import Preference
from ffm.tasks.verbalizer import VerbalizerClassification

__all__ = ["TASKS", "Examples", "Task", "TaskConfig", "batches", "build_task", "ensure_pad_token", "step_batches",
           "steps_per_epoch"]

TASKS.register("text_classification", TextClassification)
TASKS.register("causal_lm", CausalLM)
TASKS.register("masked_lm", MaskedLM)
TASKS.register("image_classification", ImageClassification)
TASKS.register("image_text_contrastive", ImageTextContrastive)
TASKS.register("verbalizer_classification", VerbalizerClassification)
TASKS.register("instruction", Instruction)
TASKS.register("preference", Preference)


def build_task(cfg: TaskConfig) -> Task:
    """The task object for a job's ``task`` section."""
    return TASKS[cfg.name](cfg)
