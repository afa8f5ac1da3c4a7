"""The task board keeps the parameters of a version while it is current or an open task needs them, and accepts
results up to `max_staleness` versions old."""

from __future__ import annotations

import pytest
import torch

from tests.grpc_helpers import PayloadAdmission
from transport.board import Refused, TaskBoard
from transport.codecs.cast import IdentityCodec
from transport.messages import TRAIN, Task


def publish(board: TaskBoard, version: int) -> None:
    board.publish(version, IdentityCodec().encode(torch.full((4,), float(version)), {})[0])


def kept(board: TaskBoard, version: int) -> bool:
    try:
        board._params_frames(version)
        return True
    except Refused:
        return False


def test_a_version_stays_while_an_open_task_needs_it() -> None:
    # Prepare: a task on version 1, then versions 2 and 3
    board = TaskBoard(max_staleness=None)
    publish(board, 1)
    task_id = board.post(Task(TRAIN, 1, 0, seed=0))
    publish(board, 2)
    publish(board, 3)
    # Assert: 1 is needed, 2 is not
    assert kept(board, 1) and not kept(board, 2) and kept(board, 3)
    # Execute: withdraw the task; version 1 goes
    board.cancel(task_id)
    assert not kept(board, 1) and kept(board, 3)


def test_results_older_than_max_staleness_are_refused() -> None:
    board = TaskBoard(PayloadAdmission(), max_staleness=1)
    publish(board, 1)
    old, recent = board.post(Task(TRAIN, 1, 0, seed=0)), None
    publish(board, 2)
    recent = board.post(Task(TRAIN, 2, 1, seed=0))
    publish(board, 3)
    board._reserve(recent, 1, 2, TRAIN)  # one version old: accepted
    with pytest.raises(Refused, match="too old for version 3"):
        board._reserve(old, 0, 1, TRAIN)
