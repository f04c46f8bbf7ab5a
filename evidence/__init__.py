"""Evidence packages for alerts, and audits of the central database against the receipt
log (docs/evidence.md). Central-side: the report and plots need the ``evidence`` extra."""
