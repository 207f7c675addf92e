"""The parallel runtime: the coordinator in the calling process, the warm pool
of worker processes, the worker, the messages between them, the codec,
shared memory, function shipping and the setup each worker takes from its
caller.
"""
