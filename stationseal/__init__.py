"""StationSeal shared core: the signed frame format, keys and records.

Both the gateway agent and the central ingest import this package; neither imports
the other. Keep it small and dependency-light: it runs on Pi-class gateways.
"""

__version__ = "0.1.0"
