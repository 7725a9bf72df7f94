"""Procedural tasks: deterministic data generators with their metrics, behind one ``Task`` interface."""

from longseq.tasks import mqar
from longseq.tasks.base import (
    IGNORE_INDEX,
    SPLITS,
    ExampleIndexError,
    Task,
    TaskParameterError,
    UnknownTaskError,
    available_tasks,
    build_task,
    register_task,
)
from longseq.tasks.mqar import MQAR

__all__ = [
    "IGNORE_INDEX",
    "MQAR",
    "SPLITS",
    "ExampleIndexError",
    "Task",
    "TaskParameterError",
    "UnknownTaskError",
    "available_tasks",
    "build_task",
    "mqar",
    "register_task",
]
