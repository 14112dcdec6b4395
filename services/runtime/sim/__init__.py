"""The `sim` engine: a simulator of a vLLM replica (pure core + asyncio adapter)."""
