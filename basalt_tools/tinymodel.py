"""Builds the tiny test model (local BPE tokenizer, random Llama, tiny LoRA); writes files only.

Nothing is downloaded: the tokenizer is trained on an English corpus generated here, the
weights are random from a fixed seed. The result loads in transformers and in vLLM (CPU
build: head_dim 64 >= 32) and is small enough to start in seconds of model load.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

BOS = "<s>"
EOS = "</s>"
PAD = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]
VOCAB_SIZE = 1000
LORA_NAME = "tiny-lora"
LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("q_proj", "v_proj")

# ChatML-like; the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

HIDDEN_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 2
NUM_KV_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 64
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 2048

# Files whose presence marks a complete model; `.complete` is written last.
_COMPLETE_MARK = ".complete"
_REQUIRED = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    f"lora/{LORA_NAME}/adapter_config.json",
    f"lora/{LORA_NAME}/adapter_model.safetensors",
    _COMPLETE_MARK,
)

_WORD_TEXT = """
time year people way day man thing woman life child world school state family student
group country problem hand part place case week company system program question work
government number night point home water room mother area money story fact month lot
right study book eye job word business issue side kind head house service friend father
power hour game line end member law car city community name president team minute idea
kid body information back parent face others level office door health person art war
history party result change morning reason research girl guy moment air teacher force
education foot boy age policy music market sense nation plan college interest death
experience effect class control care field development role effort rate heart drug show
leader light voice wife police mind price report decision son view relationship town road
garden river window apple train snow tea cache request server model token block memory
be have do say get make go know take see come think look want give use find tell ask
seem feel try leave call keep let begin help talk turn start show hear play run move
like live believe hold bring happen write provide sit stand lose pay meet include
continue set learn lead understand watch follow stop create speak read allow add spend
grow open walk win offer remember love consider appear buy wait serve die send expect
build stay fall cut reach kill remain suggest raise pass sell require decide pull
good new first last long great little own other old right big high different small
large next early young important few public bad same able quiet warm bright blue red
green dark cold happy simple clear strong free full easy hard sure real best better
"""
_WORDS = _WORD_TEXT.split()
_SUBJECTS = ["the", "a", "my", "our", "your", "their", "this", "every", "one"]
_LINKS = ["and", "but", "because", "while", "so", "when", "after", "before", "if"]
_ENDINGS = [
    ".",
    ".",
    ".",
    "!",
    "?",
    ", then it rains.",
    " every day.",
    " at night.",
    " in 2024.",
    " with 3 friends.",
]
_EXTRA = [
    "Hello, world!",
    "How are you today?",
    "I am fine, thank you.",
    "Café, naïve, résumé.",
    "Ünïcödé text: 你好，世界。",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100.",
    "def f(x):\n    return x + 1\n",
    "Emoji: 🙂 🚀 ✨",
]


def english_corpus(seed: int = 0, sentences: int = 600) -> list[str]:
    """A few KB of simple English (plus a little code and non-ASCII), the same for a seed."""
    rng = random.Random(seed)
    lines = list(_EXTRA)
    for _ in range(sentences):
        words = [rng.choice(_SUBJECTS)] + rng.sample(_WORDS, 3)
        if rng.random() < 0.4:
            words += [rng.choice(_LINKS), rng.choice(_SUBJECTS)] + rng.sample(_WORDS, 2)
        s = " ".join(words)
        lines.append(s[0].upper() + s[1:] + rng.choice(_ENDINGS))
    return lines


def is_complete(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in _REQUIRED)


def make_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny model into `out_dir` unless it already holds a complete one; return it.

    Built in a temporary sibling folder and renamed into place, so a crash never leaves a
    half-written model that counts as complete. Safe against a concurrent builder.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model is meant to be shared
    try:
        _build(tmp, seed)
        if out_dir.exists() and not is_complete(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not is_complete(out_dir):  # another builder won the race, or a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _build(d: Path, seed: int) -> None:
    tokenizer = _train_tokenizer(d, seed)
    _save_model(d, tokenizer, seed)
    _save_lora(d / "lora" / LORA_NAME, seed + 1)
    (d / _COMPLETE_MARK).write_text("ok\n")


def _train_tokenizer(d: Path, seed: int) -> Any:  # a PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(english_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(d)
    return fast


def _save_model(d: Path, tokenizer: Any, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    bos, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        intermediate_size=INTERMEDIATE_SIZE,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = LlamaForCausalLM(config)
    model = model.to(dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(d, safe_serialization=True)


def _save_lora(d: Path, seed: int) -> None:
    """A PEFT-format LoRA on q_proj and v_proj with small random A and B (B nonzero)."""
    import torch
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    out_features = {"q_proj": NUM_HEADS * HEAD_DIM, "v_proj": NUM_KV_HEADS * HEAD_DIM}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(NUM_LAYERS):
        for proj in LORA_TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            a = torch.randn(LORA_RANK, HIDDEN_SIZE, generator=gen) * 0.05
            b = torch.randn(out_features[proj], LORA_RANK, generator=gen) * 0.05
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16).contiguous()
    save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny-llama",
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    (d / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
