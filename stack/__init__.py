"""Local development stack: the broker and database that the demo, tests and benchmarks run.

Kept out of ``stationseal`` (the wire-format core that gateways and auditors import) because
it is development tooling with its own dependencies on server binaries; ``stationseal stack``
dispatches here. The API lives in :mod:`stack.manager`.
"""
