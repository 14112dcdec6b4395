"""basalt services; each sub-package is its own process and imports only `basalt` (the common
lib) and itself: its rules in `core/` (pure), its adapters beside it, `main.py` wiring them."""

__all__ = ["autoscaler", "coldstart", "mcm", "router", "runtime"]
