"""Test model: async load and an async-generator predict that streams one dict per item."""

import asyncio


class Model:
    def __init__(self, config=None):
        self._prefix = None

    async def load(self):
        await asyncio.sleep(0)
        self._prefix = "tok"

    async def predict(self, model_input):
        for i in range(int(model_input.get("n", 3))):
            await asyncio.sleep(0.001)
            yield {"index": i, "text": f"{self._prefix}{i}"}
