"""basalt: the common library every service shares, the bottom floor (imports no service).

Contracts (`pb`, `subjects`, `ids`, `kvevents`), the bus (`bus`), typed settings (`config`),
logging (`log`), metrics (`metrics`), API keys (`apikeys`), deployment files (`deployfile`),
tokenizers (`tokenizer`) and the KServe v2 codec (`kserve`).
"""

__all__ = [
    "apikeys", "bus", "config", "deployfile", "ids", "kserve", "kvevents", "log", "metrics", "pb",
    "subjects", "tokenizer",
]
