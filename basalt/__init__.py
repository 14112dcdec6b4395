"""basalt: the common library every service shares, the bottom floor (imports no service).

Contracts (`pb`, `subjects`, `ids`, `kvevents`), the bus (`bus`), typed settings (`config`),
logging (`log`), metrics (`metrics`), API keys (`apikeys`), deployment files (`deployfile`),
a child that dies with its parent (`lifeline`), a deployment's engine args
(`engine_settings`: stored form and where each goes;
`engine_check` and `vllm_args`: checked by the engine's own parser), a failed start in one
line (`startfail`), tokenizers (`tokenizer`), the KServe v2 codec (`kserve`) and the
management SDK (`client`).
"""

__all__ = [
    "apikeys", "bus", "client", "config", "deployfile", "engine_check", "engine_settings", "ids",
    "kserve", "kvevents", "lifeline", "log", "metrics", "pb", "startfail", "subjects", "tokenizer",
    "vllm_args",
]
