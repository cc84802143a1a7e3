"""The task seam: the task names its data schema, its metrics and their direction, and warns on collapse."""

from __future__ import annotations

import datasets
import pytest

from ffm.config import load_job
from ffm.data import ClientData, FederatedData
from ffm.errors import ConfigError, DataError
from ffm.runtime import run_local
from ffm.tasks import TASKS, build_task
from ffm.workspace import _check_schema


def test_an_unknown_task_is_a_config_error_listing_the_registered_tasks():
    with pytest.raises(ConfigError, match=r"task\.name: 'mlm' is not one of causal_lm, masked_lm, text_classification"):
        load_job(None, ["task.name=mlm"])


def test_data_without_a_column_the_task_needs_is_a_data_error_naming_it():
    task = build_task(load_job(None).task)
    texts = datasets.Dataset.from_dict({"text": ["a", "b"]})

    with pytest.raises(DataError, match=r"missing \['label'\]"):
        _check_schema(FederatedData(test=texts, clients=[ClientData(texts, texts)], label_names=[]), task)


def test_text_classification_maximizes_accuracy():
    task = TASKS["text_classification"](load_job(None).task)

    assert task.primary_metric == "accuracy" and task.better(0.9, 0.8) and not task.better(0.8, 0.9)


def test_a_model_that_predicts_one_class_everywhere_gets_a_warning_that_names_the_fix():
    task = build_task(load_job(None).task)

    assert "train.lr" in task.diagnose({"predicted-classes": 1, "accuracy": 0.25})
    assert task.diagnose({"predicted-classes": 3, "accuracy": 0.25}) is None


def test_the_run_reports_the_tasks_primary_metric_in_every_line_and_the_summary(job_factory):
    summary, _ = run_local(job_factory())

    assert summary["primary_metric"] == "accuracy"
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0
    assert summary["best_test_accuracy"] >= summary["final_test_accuracy"]
    assert isinstance(summary["warnings"], list)


def test_a_run_whose_model_collapsed_to_one_class_says_so_in_its_summary(job_factory):
    summary, _ = run_local(job_factory(train__lr=50.0, train__local_steps=4))  # far too high: it collapses

    (warning,) = summary["warnings"]
    assert "predicts one class" in warning and "train.lr" in warning
