"""Procedural tasks: deterministic data generators with their metrics, behind one ``Task`` interface."""

from longseq.tasks import associative_recall as associative_recall
from longseq.tasks import byte_retrieval as byte_retrieval
from longseq.tasks import bytetext as bytetext
from longseq.tasks import copying as copying
from longseq.tasks import dna as dna
from longseq.tasks import induction_heads as induction_heads
from longseq.tasks import joint_recall as joint_recall
from longseq.tasks import listops as listops
from longseq.tasks import mazes as mazes
from longseq.tasks import mqar
from longseq.tasks import passkey as passkey
from longseq.tasks import pathfinder as pathfinder
from longseq.tasks import selective_copying as selective_copying
from longseq.tasks import sfmnist as sfmnist
from longseq.tasks.base import (
    IGNORE_INDEX,
    SPLITS,
    TRAIN_TEST,
    VAL_SPLITS,
    ClassificationTask,
    ExampleIndexError,
    Task,
    TaskParameterError,
    UnknownTaskError,
    available_tasks,
    build_task,
    is_classification,
    is_classification_class,
    num_segments,
    padding_mask,
    register_task,
    task_class,
    task_splits,
)
from longseq.tasks.mqar import MQAR

__all__ = [
    "IGNORE_INDEX",
    "MQAR",
    "SPLITS",
    "TRAIN_TEST",
    "VAL_SPLITS",
    "ClassificationTask",
    "ExampleIndexError",
    "Task",
    "TaskParameterError",
    "UnknownTaskError",
    "available_tasks",
    "build_task",
    "is_classification",
    "is_classification_class",
    "mqar",
    "num_segments",
    "padding_mask",
    "register_task",
    "task_class",
    "task_splits",
]
