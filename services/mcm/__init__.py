"""basalt mcm service (see its issue; not built yet)."""
