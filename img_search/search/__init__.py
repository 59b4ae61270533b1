"""Search: query encoding, collection search over a VectorIndex, and calibration."""
