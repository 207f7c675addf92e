"""The same graph on a Dask distributed cluster: the runner (caller side) and
the task wrapper that runs on Dask workers.
"""
