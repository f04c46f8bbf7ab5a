"""Falsification detectors: one module per pattern id (v1.py ... v10.py, e1.py ... e8.py).

Each module defines one :class:`~ingest.detectors.base.Detector` subclass whose docstring
names the pattern, its data signature and its parameters. The registry in
:mod:`ingest.detectors.registry` lists them; the engine in :mod:`ingest.detectors.engine`
runs them, the same code inside the ingest service and offline (`stationseal detect`).
"""
