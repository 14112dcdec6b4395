"""basalt services; each sub-package is its own process and imports only `basalt` (the common lib)."""
