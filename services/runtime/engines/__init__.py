"""Engine implementations behind the runtime's Engine protocol: vllm, trtllm, python (no I/O here)."""
