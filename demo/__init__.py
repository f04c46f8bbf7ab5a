"""The demo station behind `make demo`: simulated lanes and a stack CEMS, the real gateway
agents, broker, ingest, InfluxDB and detectors, and a summary of what was signed, stored
and detected (demo/run.py describes the sequence)."""
