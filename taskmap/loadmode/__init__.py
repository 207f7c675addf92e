"""Load mode: a scenario graph run again and again on an open-loop schedule,
its latencies measured (DESIGN 11).  :func:`load` and :func:`start_load`
(:mod:`taskmap.loadmode.runner`), the schedule (:mod:`taskmap.loadmode.schedule`),
the report (:mod:`taskmap.loadmode.report`), ``--fail-if`` thresholds
(:mod:`taskmap.loadmode.thresholds`)."""

from taskmap.loadmode.report import LoadReport
from taskmap.loadmode.runner import LoadRun, load, start_load
from taskmap.loadmode.schedule import Schedule, make_schedule

__all__ = ["LoadReport", "LoadRun", "Schedule", "load", "make_schedule", "start_load"]
