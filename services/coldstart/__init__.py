"""basalt coldstart service (see its issue; not built yet)."""
