"""Seeing a run: the observer hooks, progress bar, per-run record, Chrome
trace, summary, task status, graph export, logging.
"""
