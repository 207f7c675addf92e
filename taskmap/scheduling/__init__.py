"""The pure scheduling state every runner shares: which tasks are ready
(state), the resource gate (resources), per-task limits (limits), and the
parallel runtime's ledger (ledger). No I/O, no processes.
"""
