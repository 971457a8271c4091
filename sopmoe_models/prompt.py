"""The one prompt format, shared by training, generation and the lm-eval tasks.

``raw`` (the test bed): ``input + SEPARATOR``, and the model continues with the output.
``chat`` (real chat-tuned checkpoints): the tokenizer's chat template with one user turn and the generation prompt,
thinking off (``enable_thinking=False``: Qwen3's template then opens the answer with an empty
``<think>\n\n</think>\n\n`` block; templates without the switch ignore it). sopmoe's targets are answers, not
reasoning traces, so training, generation and scoring all use the thinking-off prompt.
The target (what loss and metrics are computed on) is always ``output`` alone; training appends EOS after it.
"""

from __future__ import annotations

from typing import Any, Literal

PromptFormat = Literal["raw", "chat"]
SEPARATOR = "\n答:"
PROMPT_FORMATS: tuple[str, ...] = ("raw", "chat")
# Multiple-choice knowledge (the ``reasoning_mc`` task): a plain question-answer frame, never a chat template, each
# choice the bare value after one space. Format-free, so it measures the fact, not the answer's shape.
MC_FRAME = "Question: {question}\nAnswer:"


def format_prompt(text: str, style: PromptFormat = "raw", tokenizer: Any = None) -> str:
    """Return the prompt string the model sees before its answer."""
    if style == "raw":
        return f"{text}{SEPARATOR}"
    if style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "prompt_format 'chat' needs a tokenizer with a chat template; "
                "use prompt_format: raw for base or test-bed checkpoints"
            )
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
    raise ValueError(f"unknown prompt format {style!r}; choose one of {PROMPT_FORMATS}")
