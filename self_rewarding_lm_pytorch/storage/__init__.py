"""What goes to disk and to trackers: atomic checksummed files, fingerprints, checkpoints, the pair store, metrics."""
