"""Every engine behind the runtime's `Engine` protocol (no I/O here): `vllm` (with its pure
conversions in `vllm_convert`), `trtllm` (unverified: no GPU here), `sim` (a simulator), and
`python_model` (Truss-style models, errors in `python_errors`)."""

__all__ = ["python_errors", "python_model", "sim", "trtllm", "vllm", "vllm_convert"]
