"""Evaluation: task registry (``base``), the core tasks ``mcq`` / ``open_qa`` (``tasks_core``) and the box tasks
``grounding`` / ``detection`` (``tasks_grounding``, boxes by ``internvl.grounding``), text metrics
(``metrics``) and the reusable generate-and-score loop (``runner``, imported on demand: it needs the model).
Around the results: report metrics from their packages (``report_metrics``), bootstrap intervals and paired
tests (``bootstrap``), the HTML report (``html_report``) and run comparison (``compare``).

Importing this package registers the core tasks; plugins register theirs with ``register_task`` on import.
"""
from internvl.evaluation.base import EVAL_TASKS, EvalTask, create_task, list_tasks, register_task
from internvl.evaluation import tasks_core  # noqa: F401  (registers mcq and open_qa)
from internvl.evaluation import tasks_grounding  # noqa: F401  (registers grounding and detection)

__all__ = ["EVAL_TASKS", "EvalTask", "create_task", "list_tasks", "register_task"]
