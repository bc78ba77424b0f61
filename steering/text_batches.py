"""Documents as right-padded token batches, and running a model up to a hook over them.

Right padding is safe for a causal model without an attention mask: a real token never attends
to a later (pad) position, so every real position sees exactly its own document.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from workbench.errors import InvalidInputError


@dataclass
class TokenBatch:
    """tokens [batch, pos] (BOS first, right-padded), mask [batch, pos] (True on real tokens
    after BOS: the positions statistics count), doc [batch] (index into the document list)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    doc: torch.Tensor


def encode_documents(tokenizer, texts: Sequence[str], n_ctx: int) -> list[list[int]]:
    """Token ids per document: BOS + the text's tokens, cut to n_ctx (documents with fewer than
    two tokens after BOS are kept as they are; callers drop them if they need to)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        raise InvalidInputError("the tokenizer has no BOS token; LangFIR and steering need one")
    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        out.append([bos, *ids][:n_ctx])
    return out


def batches(docs: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> Iterator[TokenBatch]:
    """Right-padded batches of the documents, in order (similar lengths together per batch)."""
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(docs[i]) for i in chunk)
        tokens = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, i in enumerate(chunk):
            tokens[row, :len(docs[i])] = torch.tensor(docs[i], dtype=torch.long)
            mask[row, 1:len(docs[i])] = True
        yield TokenBatch(tokens, mask, torch.tensor(chunk, dtype=torch.long))


def pad_id_of(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.no_grad()
def residuals_at(model, hook: str, tokens: torch.Tensor) -> torch.Tensor:
    """The activation at `hook` for tokens [batch, pos] -> [batch, pos, d] (the forward pass
    stops after the hook's block)."""
    from workbench.models.fused_forward import fused_forward
    from workbench.models.hooks import hook_layer

    layer = hook_layer(hook)
    stop = None if layer is None else layer + 1
    device = next(model.parameters()).device
    with fused_forward(model, hook):
        _, cache = model.run_with_cache(tokens.to(device), names_filter=[hook],
                                        stop_at_layer=stop, return_type=None)
    return cache[hook]


@torch.no_grad()
def token_losses(model, tokens: torch.Tensor, fwd_hooks=()) -> torch.Tensor:
    """Next-token cross-entropy [batch, pos - 1] of tokens [batch, pos] (position t predicts
    t + 1), with optional TransformerLens hooks attached."""
    from workbench.models.fused_forward import fused_forward

    device = next(model.parameters()).device
    tokens = tokens.to(device)
    with fused_forward(model, None), model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(tokens, return_type="logits")
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1).cpu()
