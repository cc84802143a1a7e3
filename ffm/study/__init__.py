"""``ffm compare``: one job run federated, centralized and local-only, over seeds and a learning-rate grid,
measured the same way in every mode and reported (REPORT.md, results.csv, PNG plots)."""

from ffm.study.plan import StudyPlan, StudyRun
from ffm.study.results import choose, load_results, paired_difference, save_results
from ffm.study.runner import run_study

__all__ = ["StudyPlan", "StudyRun", "choose", "load_results", "paired_difference", "run_study", "save_results"]
