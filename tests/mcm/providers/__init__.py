"""Tests of the control plane's providers (local processes, the simcloud SIMULATOR)."""
