"""Bench stage: latency of the dynamic network against its static twin, side by side."""
