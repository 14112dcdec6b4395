"""basalt autoscaler service (see its issue; not built yet)."""
