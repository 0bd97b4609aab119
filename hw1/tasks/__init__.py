"""The homework's problems, one module each: what differs between P1 and P2 lives in ``hw1/tasks/``.

Each module (:mod:`hw1.tasks.cls`, :mod:`hw1.tasks.seg`) holds all of its problem that is not a
model: the course data's layout, the training config and flags, split loading, the scorer,
summary and printed lines, the prediction writer and the shipped checkpoint, gathered in its
``TASK`` (:class:`hw1.tasks.base.Task`). The rest of hw1 asks the task (:func:`get_task`) instead
of branching on its name, so a third problem is one more module here and one line below.
"""
from hw1.tasks import cls, seg
from hw1.tasks.base import CHECKPOINTS, Layout, Task  # noqa: F401 (the names a task is made of)

TASKS = {task.name: task for task in (cls.TASK, seg.TASK)}


def get_task(name):
    """The :class:`Task` named ``name`` (``cls`` or ``seg``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def config_of(task, values):
    """The saved config ``values`` (an args.json dict) of a ``task`` run, or None when there are none."""
    return get_task(task).config.from_dict(values) if values else None
