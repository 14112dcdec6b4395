"""Test model: no load(), a sync-generator predict that can fail part-way through the stream."""


class Model:
    def __init__(self):
        pass

    def predict(self, model_input):
        fail_at = model_input.get("fail_at")
        for i in range(model_input["n"]):
            if i == fail_at:
                raise RuntimeError(f"counter broke at {i}")
            yield i
