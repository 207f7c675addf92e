"""The objects on the per-task paths have no instance dict: their attributes
are slots.  (CPython 3.11 shares an instance dict's keys among instances only
up to 30 attributes; past that every ``self.attribute`` and ``self.method()``
takes the slow lookup.  The worker crossed it when task output added its
attributes, and its cpu thread ran 6% more instructions per task.)"""

from __future__ import annotations

import pytest

from taskmap.bookkeeping import Bookkeeper
from taskmap.dask.runner import _DaskRun
from taskmap.loadmode.runner import LoadCoordinator
from taskmap.runtime.coordinator import Coordinator
from taskmap.runtime.pool import WorkerHandle
from taskmap.runtime.worker import Worker
from taskmap.scheduling.ledger import Ledger
from taskmap.scheduling.expansion import ExpandingState
from taskmap.scheduling.instances import InstanceState
from taskmap.scheduling.resources import ResourceGate
from taskmap.scheduling.state import SchedulingState


@pytest.mark.parametrize(
    "cls",
    [
        Worker,
        Coordinator,
        Ledger,
        _DaskRun,
        LoadCoordinator,
        WorkerHandle,
        Bookkeeper,
        SchedulingState,
        ExpandingState,
        InstanceState,
        ResourceGate,
    ],
    ids=lambda c: c.__name__,
)
def test_a_hot_class_keeps_its_attributes_in_slots(cls):
    assert cls.__dictoffset__ == 0, f"{cls.__name__} instances have a __dict__"
