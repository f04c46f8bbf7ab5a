"""Chain of custody at the centre: the receipt log, signed checkpoints and the central
service's signing key (docs/evidence.md). Evidence packages are built on it (evidence/)."""
