"""The chat prompt set in SmolLM2's own chat template (the GGUF's tokenizer)."""

from __future__ import annotations

from moe_spec.ab.prompts import CHAT_QUESTIONS, chat_prompts, chat_template_of
from moe_spec.models.gguf_weights import gguf_tokenizer


def test_chat_prompts_open_the_assistants_turn_in_smollm2s_template(gguf_path):
    tok = gguf_tokenizer(gguf_path)
    prompts = chat_prompts(chat_template_of(tok), 2)
    for question, prompt in zip(CHAT_QUESTIONS, prompts, strict=False):
        assert prompt.startswith("<|im_start|>system\n")  # the template's default system turn
        assert f"<|im_start|>user\n{question}<|im_end|>\n" in prompt
        assert prompt.endswith("<|im_start|>assistant\n")
        ids = tok.encode(prompt, add_special_tokens=False)
        start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
        # the turn markers are single special tokens, not spelled out in characters
        assert ids[0] == start and ids.count(start) == 3 and ids.count(end) == 2
