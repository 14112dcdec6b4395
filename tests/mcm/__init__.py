"""Tests of the control plane (mcm)."""
