"""basalt router service (see its issue; not built yet)."""
