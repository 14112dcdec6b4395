"""The vLLM settings tests start vLLM's CPU build with (basalt_tools/vllm_cpu.py says why)."""

from basalt_tools.vllm_cpu import CPU_FLAGS, CPU_SETTINGS

__all__ = ["CPU_FLAGS", "CPU_SETTINGS"]
