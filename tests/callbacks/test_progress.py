"""The rich bar's columns: a true it/s where rich has no estimate of its own."""

import time

from rich.progress import Progress

from lightning_seq.callbacks.progress import _Speed


def test_a_bar_of_one_slow_batch_shows_its_speed_not_zero():
    """Rich estimates speed from two updates or more in its window; a predict bar of one batch that took
    0.2 s has one, and Lightning's column read ``0.00it/s``."""
    progress = Progress()
    task_id = progress.add_task("Predicting", total=1)
    time.sleep(0.2)
    progress.update(task_id, completed=1)
    task = progress.tasks[0]
    assert task.speed is None  # rich's own estimate: none
    speed = float(_Speed(style="").render(task).plain.removesuffix("it/s"))
    assert 1.0 < speed <= 5.0  # one batch in at least 0.2 s
