"""basalt: the common library every service shares (contracts, bus, config, logging, metrics)."""
