"""Tests of the benchmarks: trace loading and the routing replay."""
