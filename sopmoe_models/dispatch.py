"""``dispatch``: the per-request baseline a skeptic runs first (issue 11). A classifier reads the prompt and sends
the *whole* request to one expert, which then scores or generates alone (1x per token, plus one prompt prefill of
the foundation to read the prompt).

The classifier is a fair one, not a strawman: logistic regression on the foundation's own final hidden states of the
prompt (mean over the prompt's tokens, concatenated with the last prompt token's state), standardised; the L2 strength
is chosen on dev data. Labels come from the experts themselves: a training request belongs to the expert that gives
its reference answer the lower per-token NLL (the "oracle" expert of that request), so no family names are needed.

Checkpoint: ``dispatch.safetensors`` (``weight`` (D,), ``bias`` (), ``mean`` (D,), ``std`` (D,)) and ``dispatch.json``
(type, features, training record, metrics and each expert's fingerprint, as a router's ``router.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sopmoe_models.cards import CardError, DispatchCard
from sopmoe_models.experts import ExpertMismatchError, ExpertPair
from sopmoe_models.outputs import atomic_path

WEIGHTS = "dispatch.safetensors"
CARD = DispatchCard.FILE  # dispatch.json
FEATURES = "foundation final hidden state: mean over the prompt tokens, concatenated with the last prompt token"
EXPERTS = ("foundation", "sft")


@torch.inference_mode()
def prompt_features(model, prompts: list[list[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """(N, 2H) float32: per prompt, the mean of the model's last hidden states over its tokens ‖ the last token's."""
    device = model.get_input_embeddings().weight.device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding
    out: list[torch.Tensor | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(prompts[i])] = torch.tensor(prompts[i])
            mask[row, : len(prompts[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        res = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
        hidden = res.hidden_states[-1].float()  # (b, T, H); logits only for the last position (cheap at any vocab)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        last = hidden[torch.arange(len(idx), device=device), mask.sum(1) - 1]
        feats = torch.cat([mean, last], dim=-1).cpu()
        for row, i in enumerate(idx):
            out[i] = feats[row]
    return torch.stack(out) if out else torch.zeros(0)


class Dispatcher:
    """A fitted logistic regression: p(sft | prompt features). ``choose`` returns 0 (foundation) or 1 (sft)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 card: dict[str, Any] | None = None):
        self.weight, self.bias, self.mean, self.std = weight.float(), bias.float(), mean.float(), std.float()
        self.card = card or {}
        if not all(bool(torch.isfinite(t).all()) for t in (self.weight, self.bias, self.mean, self.std)):
            raise ValueError("dispatch classifier has NaN or infinite parameters; retrain it with `sopmoe train-dispatch`")

    def p_sft(self, features: torch.Tensor) -> torch.Tensor:
        z = (features.float() - self.mean) / self.std
        return torch.sigmoid(z @ self.weight + self.bias)

    def choose(self, features: torch.Tensor) -> list[int]:
        return (self.p_sft(features) > 0.5).long().tolist()

    def save(self, out_dir: str | Path, card: dict[str, Any]) -> Path:
        """Write ``dispatch.safetensors`` and ``dispatch.json`` into ``out_dir`` (each file temp, then rename)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        with atomic_path(out_dir / WEIGHTS) as tmp:
            save_file({"weight": self.weight.contiguous(), "bias": self.bias.reshape(()).contiguous(),
                       "mean": self.mean.contiguous(), "std": self.std.contiguous()}, str(tmp), metadata={"format": "pt"})
        DispatchCard.new(**card).write(out_dir / CARD)
        self.card = card
        return out_dir / WEIGHTS


def resolve(path: str | Path) -> Path:
    """The classifier folder of ``path`` (the folder or its ``dispatch.safetensors``)."""
    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    for name in (WEIGHTS, CARD):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"no dispatch classifier at {p}: {folder / name} is missing "
                                    "(train one with `sopmoe train-dispatch`)")
    return folder


def read_card(path: str | Path) -> DispatchCard:
    card = resolve(path) / CARD
    try:
        data = DispatchCard.read(card)
    except CardError as e:
        if "not valid JSON" in str(e) or "not UTF-8" in str(e):
            raise ValueError(f"{e}; retrain with `sopmoe train-dispatch`") from None
        data = None
    if data is None or data.type != "dispatch":
        raise ValueError(f"{card}: not a sopmoe dispatch card (type must be 'dispatch')")
    return data


def load_dispatcher(path: str | Path, pair: ExpertPair | None = None) -> Dispatcher:
    """Load a classifier; with ``pair``, refuse experts other than the ones it was trained with (fingerprints)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve(path)
    card = read_card(folder)
    try:
        t = load_file(str(folder / WEIGHTS))
        d = Dispatcher(t["weight"], t["bias"], t["mean"], t["std"], card)
    except (SafetensorError, KeyError, OSError) as e:
        raise ValueError(f"{folder / WEIGHTS}: unreadable dispatch weights ({e}); retrain with `sopmoe train-dispatch`") from None
    if pair is not None:
        now = pair.fingerprints()
        for role in EXPERTS:
            want = card.get("experts", {}).get(role, {}).get("fingerprint")
            if want is not None and now[role] is not None and want != now[role]:
                raise ExpertMismatchError(
                    f"dispatch classifier {folder} was trained with a {role} expert of fingerprint {want}, but the "
                    f"{role} given ({getattr(pair, role + '_path')}) has fingerprint {now[role]}; retrain it")
    return d
