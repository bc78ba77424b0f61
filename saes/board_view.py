"""The board view: at one position of a chess game, the board and the units most active there,
each with its best board-state cell.

    view = board_view(model, game_text, dot, layer=1, cells=table.unit_cells("MoE-X"))
    view.board            # python-chess Board at that "."
    view.units[0]         # ActiveUnit(unit=417, activation=2.3, expert=1, square="e4", piece="P",
                          #            f1=0.81, holds=True, ...)

A position is the index of a "." in the PGN string (before white's move of that number), as in
`workbench.data.chess`. The units are the MLP hidden units of block `layer` (`hook_post`: a
dense MLP's neurons, or MoE-X's wide hidden vector of experts x expert width), or the features of
an SAE trained on them. A unit's best cell and its F1 come from the board-state evaluation
(`saes.board_eval.UnitCells`, stored with every table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import chess
import torch
from transformer_lens import HookedTransformer

from saes.board_eval import UnitCells, mlp_hidden_hook, sae_features
from workbench.data.chess import PIECE_CLASSES, board_at, dot_positions, encode_games
from workbench.errors import InvalidInputError


@dataclass
class ActiveUnit:
    """One unit active at the position.

    relative: activation / the unit's max activation on the evaluation's fit positions.
    expert: the MoE expert the unit belongs to (unit // expert width), None for dense / SAE.
    square, piece, f1, threshold: its best cell ("e4", "P"; PIECE_CLASSES symbols, upper case
    white) and that cell's F1 at its best threshold; None when unknown or the unit has none.
    on: whether the unit is above its best threshold here; holds: whether its best cell holds
    on this board (so on and holds = the unit is right about this board).
    """

    unit: int
    activation: float
    relative: float | None = None
    expert: int | None = None
    square: str | None = None
    piece: str | None = None
    f1: float | None = None
    threshold: float | None = None
    on: bool | None = None
    holds: bool | None = None

    @property
    def cell(self) -> str:
        """'P on e4' (or '' without a cell)."""
        return f"{self.piece} on {self.square}" if self.square else ""


@dataclass
class BoardView:
    """The board at a position and its top active units (highest activation first).

    n_active: units above zero there; width: units in the layer (features of the SAE).
    """

    board: chess.Board
    dot: int
    move: int
    units: list[ActiveUnit] = field(default_factory=list)
    n_active: int = 0
    width: int = 0

    def cells(self) -> dict[int, str]:
        """Square index -> best-cell label of the top units that name one (for highlighting)."""
        out: dict[int, str] = {}
        for u in self.units:
            if u.square:
                out.setdefault(chess.parse_square(u.square), u.cell)
        return out


def game_positions(text: str, n_ctx: int) -> list[int]:
    """The "." positions of a game that the model sees (its token dot + 1 inside n_ctx, BOS
    first)."""
    return [d for d in dot_positions(text) if d + 1 < n_ctx]


@torch.no_grad()
def unit_activations(model: HookedTransformer, text: str, dot: int, layer: int,
                     sae=None) -> torch.Tensor:
    """Activations [width] of block `layer`'s MLP hidden units (or SAE features) at the token
    of character `dot` of the game `text`."""
    if not 0 <= layer < model.cfg.n_layers:
        raise InvalidInputError(f"layer {layer} is outside the model ({model.cfg.n_layers} "
                                "layers)")
    if not 0 <= dot < len(text) or dot + 1 >= model.cfg.n_ctx:
        raise InvalidInputError(f"position {dot} is outside the game ({len(text)} characters) "
                                f"or the model's context ({model.cfg.n_ctx - 1} characters)")
    hook = mlp_hidden_hook(layer)
    tokens = encode_games(model.tokenizer, [text], model.cfg.n_ctx)
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(tokens.to(device), names_filter=[hook],
                                    stop_at_layer=layer + 1)
    acts = cache[hook][0, dot + 1].float().cpu()
    if sae is not None:
        acts = sae_features(sae, acts[None])[0]
    return acts


def board_view(model: HookedTransformer, text: str, dot: int, layer: int,
               cells: UnitCells | None = None, top: int = 10, sae=None) -> BoardView:
    """The board at "." index `dot` of game `text` and the `top` most active units of block
    `layer` there (see the module docstring); `cells` from the table adds each unit's best
    cell."""
    if top < 1:
        raise InvalidInputError(f"top must be at least 1, got {top}")
    board = board_at(text, dot)
    acts = unit_activations(model, text, dot, layer, sae)
    if cells is not None and len(cells.cell) != len(acts):
        raise InvalidInputError(f"the unit cells describe {len(cells.cell)} units but the layer "
                                f"has {len(acts)}; they belong to another model or layer")
    d_expert = None
    mlp = model.blocks[layer].mlp
    if sae is None and hasattr(mlp, "spec"):  # a MoE layer: units are expert-major blocks
        d_expert = mlp.spec.d_expert
    n_active = int((acts > 0).sum())
    order = torch.argsort(acts, descending=True)[:min(top, n_active)]
    units = []
    for u in order.tolist():
        a = float(acts[u])
        unit = ActiveUnit(u, a, expert=None if d_expert is None else u // d_expert)
        if cells is not None:
            max_act = float(cells.max_act[u])
            unit.relative = a / max_act if max_act > 0 else None
            found = cells.square_piece(u)
            if found is not None:
                square, piece = found
                unit.square, unit.piece = chess.square_name(square), PIECE_CLASSES[piece]
                unit.f1, unit.threshold = float(cells.f1[u]), float(cells.threshold[u])
                unit.on = a > unit.threshold * max_act
                held = board.piece_at(square)
                unit.holds = held is not None and held.symbol() == unit.piece
        units.append(unit)
    return BoardView(board, dot, board.fullmove_number, units, n_active, len(acts))
