"""Test model: sync load/preprocess/predict/postprocess; input keys ask it to misbehave."""

import time


class Model:
    def __init__(self, **kwargs):
        self._config = kwargs["config"]
        self._data_dir = kwargs["data_dir"]
        self._secrets = kwargs["secrets"]
        self._greeting = None

    def load(self):
        self._greeting = (self._data_dir / "greeting.txt").read_text()

    def preprocess(self, model_input):
        return {"input": model_input, "preprocessed": True}

    def predict(self, model_input):
        request = model_input["input"]
        if isinstance(request, dict):
            if "sleep" in request:
                time.sleep(request["sleep"])
            kind = request.get("raise")
            if kind == "ValueError":
                raise ValueError("text must not be empty")
            if kind == "KeyError":
                return request["no_such_key"]
            if kind == "RuntimeError":
                raise RuntimeError("CUDA fell over")
            if request.get("return_set"):
                return {"a set": {1, 2}}
        return {
            "echo": request,
            "preprocessed": model_input["preprocessed"],
            "greeting": self._greeting,
            "config_model_name": self._config.get("model_name"),
        }

    def postprocess(self, model_output):
        return {**model_output, "postprocessed": True} if isinstance(model_output, dict) else model_output
