"""MLflow: one MLflow run per ffm run, its config as parameters and every round's metrics (``mlflow-skinny``'s
tracking client). By default a SQLite store in the run directory, so no server is needed (``mlflow ui
--backend-store-uri sqlite:///RUN_DIR/mlflow.db``); MLflow 3 refuses its old file store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffm.observers.base import Observer, scalars_of
from ffm.settings import Job, flatten, option, to_dict

__all__ = ["MLflow", "MLflowConfig"]


@dataclass
class MLflowConfig:
    """Where MLflow records runs."""

    mlflow_uri: str = option("", "report.to=mlflow: the tracking URI (empty = sqlite:///RUN_DIR/mlflow.db)")
    mlflow_experiment: str = option("ffm", "report.to=mlflow: the experiment's name")


class MLflow(Observer):
    """Parameters once, metrics per round (step = round), the summary's figures at the end."""

    config = MLflowConfig

    def __init__(self, job: Job, run_dir: Path) -> None:
        super().__init__(job, run_dir)
        from mlflow.tracking import MlflowClient  # mlflow-skinny: only when chosen

        uri = job.report.mlflow_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(job.report.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(job.report.mlflow_experiment))
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        params = {k: str(v)[:500] for k, v in flatten(to_dict(job)).items()}
        for key, value in params.items():
            self.client.log_param(self.run_id, key, value)

    def round(self, line: dict[str, Any]) -> None:
        step = int(line["round"])
        for name, value in scalars_of(line).items():
            self.client.log_metric(self.run_id, name.replace("/", "."), value, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        for name, value in scalars_of({k: v for k, v in summary.items() if k != "rounds"}).items():
            self.client.log_metric(self.run_id, f"summary.{name.replace('/', '.')}", value)
        self.client.set_terminated(self.run_id)
