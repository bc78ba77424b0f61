"""Tokens as HTML with activation highlighting and hover text (Neuronpedia-style contexts)."""

from __future__ import annotations

import html

STYLE = """
<style>
.wb-ctx {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.9rem;
         line-height: 1.9; margin: 0 0 0.35rem 0; white-space: pre-wrap; word-break: break-word;}
.wb-ctx .t {border-radius: 3px; padding: 1px 0;}
.wb-ctx .c {outline: 1.5px solid #c0392b;}
.wb-ctx .a {color: #666; font-size: 0.75rem; margin-right: 0.5rem;}
</style>
"""


def _shown(token: str) -> str:
    return html.escape(token.replace("\n", "⏎"))


def token_spans(tokens: list[str], acts: list[float], max_act: float, centre: int | None = None,
                hover: list[str] | None = None) -> str:
    """One line of tokens; each token's background is orange in proportion to act / max_act;
    `hover` (per token) becomes its tooltip."""
    scale = max_act if max_act > 0 else 1.0
    parts = []
    for i, (tok, act) in enumerate(zip(tokens, acts)):
        alpha = max(0.0, min(1.0, act / scale))
        tip = f"activation {act:.3f}" + (f"\n{hover[i]}" if hover and hover[i] else "")
        cls = "t c" if i == centre else "t"
        parts.append(f'<span class="{cls}" style="background: rgba(255,140,0,{alpha:.2f})" '
                     f'title="{html.escape(tip)}">{_shown(tok)}</span>')
    return "".join(parts)


def contexts_html(rows: list[dict], max_act: float) -> str:
    """Context lines: rows with tokens, acts, centre, activation and optional hover."""
    lines = [STYLE]
    for row in rows:
        lines.append(f'<div class="wb-ctx"><span class="a">{row["activation"]:.2f}</span>'
                     + token_spans(row["tokens"], row["acts"], max_act, row.get("centre"),
                                   row.get("hover")) + "</div>")
    return "\n".join(lines)


def hover_lines(predictions: list[list[tuple[str, float]]]) -> list[str]:
    """Per token: 'next: tok (p%), ...' from the model's top predictions."""
    return ["next: " + ", ".join(f"{t!r} {p:.0%}" for t, p in preds) for preds in predictions]
