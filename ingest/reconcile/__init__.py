"""Reconciliation: what a site *reported* compared with what its instruments *measured*.

* vehicle.py — vehicle test results a station reported versus the sealed 1 Hz process data;
* hj212.py — values and flags the site's HJ 212 data logger reported versus the analyzer
  readings the gateway read directly (both signed by the same gateway), raised as E3 / E6
  alerts through the detection framework, live in the ingest service and offline in
  `stationseal detect`.

docs/reconciliation.md describes the comparisons and their parameters.
"""
