"""Board-state interpretability of hidden units and SAE features (Karvonen et al. 2024).

    feats = collect_board_features(model, lab, "chess", "test", hooks=[hook])
    result = board_state_metrics(fit_x, fit_boards, test_x, test_boards)

Features are read at the "." positions of chess games (before each white move), where the board
is known exactly (`workbench.data.chess`). A board-state *cell* is (square, piece class) for the
12 non-empty classes (64 * 12 = 768 cells); cells that never occur in the data are left out.

For a threshold t in THRESHOLDS, feature f is "on" at a position when its activation exceeds
t * max_f (max_f = its largest activation on the fit positions; features that never exceed 0 are
never on). With TP[f, c] = positions where f is on and c holds, fires[f], positives[c]:

- coverage(t) = mean over cells c of max_f F1[f, c],  F1 = 2 TP / (fires + positives), on the
  test positions; coverage = max_t coverage(t).
- reconstruction(t): on the fit positions, f becomes a classifier for c when
  TP / fires >= 0.95 and fires >= 10; on the test positions the predicted board is the union of
  the cells of the active classifiers, scored by the F1 over all (position, cell) pairs
  (micro-averaged); reconstruction = max_t reconstruction(t).

Per feature, `UnitCells` keeps its best cell (and that cell's F1 and threshold): what the
board view (`saes.board_view`) shows next to the units active at a position.

`board_probe_accuracy` trains a supervised probe per square (workbench.probes, 13 classes) as the
upper bound; `router_score_l0` measures how well the MoE-X routing score predicts each expert's
true firing fraction. This module uses SAEs (`sae_features`), so it lives in `saes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformer_lens import HookedTransformer

from workbench.data.chess import N_SQUARES, PIECE_CLASSES, load_board_states, load_games
from workbench.errors import InvalidInputError
from workbench.lab import Lab

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))
N_CLASSES = len(PIECE_CLASSES)  # 13 incl. empty
PRECISION_MIN = 0.95
MIN_FIRES = 10
_CHUNK = 4096
UNITS_FILE = "units.parquet"  # per table row and unit: its best cell (`UnitCells.to_frame`)
ROUTER_KEYS = ("router_l0_r", "router_l0_r_per_layer", "expert_load", "dead_experts",
               "router_pairs", "router_games")
ROUTER_GAMES = 64  # test games the router score, expert load and dead experts are measured on


@dataclass
class BoardFeatures:
    """Activations at the "." positions of games: per hook [n, width], boards [n, 64] int64."""

    acts: dict[str, torch.Tensor]
    boards: torch.Tensor
    doc_ids: torch.Tensor


@torch.no_grad()
def collect_board_features(model: HookedTransformer, lab: Lab, dataset: str, split: str,
                           hooks: list[str], max_games: int | None = None,
                           batch_size: int = 16) -> BoardFeatures:
    """Run the games of `split` through `model` and keep `hooks` at the "." positions that fit
    in the model's context."""
    from workbench.data.chess import encode_games
    from workbench.models.hooks import hook_layer, validate_hook

    for hook in hooks:
        validate_hook(model, hook)
    games = load_games(lab, dataset, split)
    if max_games is not None:
        games = games.iloc[:max_games]
    states = load_board_states(lab, dataset, split)
    n_ctx = model.cfg.n_ctx
    rows = encode_games(model.tokenizer, games.text.tolist(), n_ctx)
    row_of = {int(d): i for i, d in enumerate(games.doc_id)}
    keep = torch.tensor([int(d) in row_of for d in states.doc_ids]) & (states.char_pos + 1 < n_ctx)
    doc_ids, positions = states.doc_ids[keep], states.char_pos[keep].long() + 1
    boards = states.boards[keep].long()
    game_row = torch.tensor([row_of[int(d)] for d in doc_ids], dtype=torch.long)
    layers = [hook_layer(h) for h in hooks]
    stop = None if any(ly is None for ly in layers) else max(layers) + 1
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    model.eval()
    for start in range(0, len(rows), batch_size):
        batch_rows = torch.arange(start, min(start + batch_size, len(rows)))
        _, cache = model.run_with_cache(rows[batch_rows].to(device), names_filter=hooks,
                                        stop_at_layer=stop)
        sel = (game_row >= start) & (game_row < start + len(batch_rows))
        r, p = game_row[sel] - start, positions[sel]
        for hook in hooks:
            out[hook].append(cache[hook][r.to(device), p.to(device)].float().cpu())
    return BoardFeatures({h: torch.cat(v) for h, v in out.items()}, boards, doc_ids)


def cell_labels(boards: torch.Tensor) -> torch.Tensor:
    """[n, 64] piece classes -> [n, 768] bool: (square, class 1..12) one-hot, square-major."""
    onehot = torch.nn.functional.one_hot(boards.long(), N_CLASSES)[..., 1:]  # [n, 64, 12]
    return onehot.reshape(len(boards), -1).bool()


def _binarize(x: torch.Tensor, max_act: torch.Tensor, t: float) -> torch.Tensor:
    on = x > (t * max_act)
    return on & (max_act > 0)


def _counts(x: torch.Tensor, max_act: torch.Tensor, t: float, Y: torch.Tensor):
    """TP [F, C] and fires [F] of the binarized features against cell labels Y [n, C]."""
    tp = torch.zeros(x.shape[1], Y.shape[1])
    fires = torch.zeros(x.shape[1])
    for s in range(0, len(x), _CHUNK):
        on = _binarize(x[s:s + _CHUNK], max_act, t).float()
        tp += on.T @ Y[s:s + _CHUNK].float()
        fires += on.sum(0)
    return tp, fires


@dataclass
class UnitCells:
    """Each feature's best board-state cell: the (square, piece class) cell and threshold with
    its highest F1 on the test positions (the F1 that coverage takes the best of per cell).

    cell [F] int64 (square * 12 + class - 1, as `cell_labels`; -1 for a feature that never
    fires), f1 [F], threshold [F] (fraction of max_act), max_act [F] (largest activation on the
    fit positions).
    """

    cell: torch.Tensor
    f1: torch.Tensor
    threshold: torch.Tensor
    max_act: torch.Tensor

    def square_piece(self, unit: int) -> tuple[int, int] | None:
        """(square 0..63, piece class 1..12) of a unit's best cell, None if it has none."""
        cell = int(self.cell[unit])
        return None if cell < 0 else (cell // (N_CLASSES - 1), cell % (N_CLASSES - 1) + 1)

    def to_frame(self, variant: str):
        import pandas as pd

        cell = self.cell.long()
        return pd.DataFrame({
            "variant": variant, "unit": range(len(cell)),
            "square": torch.where(cell >= 0, cell // (N_CLASSES - 1), -1).numpy(),
            "piece": torch.where(cell >= 0, cell % (N_CLASSES - 1) + 1, 0).numpy(),
            "f1": self.f1.float().numpy(), "threshold": self.threshold.float().numpy(),
            "max_act": self.max_act.float().numpy()})

    @classmethod
    def from_frame(cls, frame) -> UnitCells:
        """Inverse of `to_frame` (the rows of one variant, any order)."""
        frame = frame.sort_values("unit")
        square = torch.tensor(frame.square.to_numpy(), dtype=torch.long)
        piece = torch.tensor(frame.piece.to_numpy(), dtype=torch.long)
        cell = torch.where(square >= 0, square * (N_CLASSES - 1) + piece - 1, -1)
        return cls(cell, torch.tensor(frame.f1.to_numpy()), torch.tensor(frame.threshold.to_numpy()),
                   torch.tensor(frame.max_act.to_numpy()))


@dataclass
class BoardStateResult:
    """Coverage and reconstruction per threshold and at the best threshold."""

    coverage: float
    reconstruction: float
    coverage_by_t: list[float] = field(default_factory=list)
    reconstruction_by_t: list[float] = field(default_factory=list)
    best_t_coverage: float = 0.0
    best_t_reconstruction: float = 0.0
    n_features: int = 0
    n_cells: int = 0
    alive_features: int = 0
    units: UnitCells | None = None

    def to_dict(self) -> dict:
        """The scalar and per-threshold results (without the per-unit cells)."""
        return {k: v for k, v in self.__dict__.items() if k != "units"}


def board_state_metrics(fit_x: torch.Tensor, fit_boards: torch.Tensor, test_x: torch.Tensor,
                        test_boards: torch.Tensor,
                        thresholds: tuple[float, ...] = THRESHOLDS) -> BoardStateResult:
    """Coverage and reconstruction (module docstring) of features fit_x [n_fit, F] /
    test_x [n_test, F] against boards [n, 64]."""
    if fit_x.shape[1] != test_x.shape[1] or len(fit_x) != len(fit_boards) \
            or len(test_x) != len(test_boards):
        raise InvalidInputError("features and boards must have matching rows and widths")
    if len(fit_x) == 0 or len(test_x) == 0:
        raise InvalidInputError("no board positions to evaluate; use more games")
    fit_x, test_x = fit_x.float(), test_x.float()
    Y_fit, Y_test = cell_labels(fit_boards), cell_labels(test_boards)
    cells = Y_test.any(0) & Y_fit.any(0)  # cells that occur
    Y_fit, Y_test = Y_fit[:, cells], Y_test[:, cells]
    positives = Y_test.float().sum(0)  # [C]
    max_act = fit_x.max(0).values
    cell_index = cells.nonzero().squeeze(1)  # occurring cell -> index into the 768 cells
    unit_f1 = torch.full((fit_x.shape[1],), -1.0)
    unit_cell = torch.full((fit_x.shape[1],), -1, dtype=torch.long)
    unit_t = torch.zeros(fit_x.shape[1])
    cov, rec = [], []
    for t in thresholds:
        tp, fires = _counts(test_x, max_act, t, Y_test)
        f1 = 2 * tp / (fires[:, None] + positives[None, :]).clamp_min(1)
        cov.append(float(f1.max(0).values.mean()))
        best, at = f1.max(1)  # per feature: its best cell at this threshold
        better = best > unit_f1
        unit_f1, unit_t = torch.where(better, best, unit_f1), torch.where(better, t, unit_t)
        unit_cell = torch.where(better, cell_index[at], unit_cell)
        tp_fit, fires_fit = _counts(fit_x, max_act, t, Y_fit)
        precision = tp_fit / fires_fit[:, None].clamp_min(1)
        classifier = ((precision >= PRECISION_MIN) & (fires_fit[:, None] >= MIN_FIRES)).float()
        hit = pred_total = 0.0
        for s in range(0, len(test_x), _CHUNK):
            on = _binarize(test_x[s:s + _CHUNK], max_act, t).float()
            pred = (on @ classifier) > 0
            hit += float((pred & Y_test[s:s + _CHUNK]).sum())
            pred_total += float(pred.sum())
        rec.append(2 * hit / (pred_total + float(positives.sum())))
    i_cov, i_rec = int(np.argmax(cov)), int(np.argmax(rec))
    dead = ~(max_act > 0) | (unit_f1 <= 0)  # never on, or never on a true cell
    units = UnitCells(torch.where(dead, -1, unit_cell), unit_f1.clamp_min(0),
                      torch.where(dead, 0.0, unit_t), max_act)
    return BoardStateResult(cov[i_cov], rec[i_rec], cov, rec, thresholds[i_cov],
                            thresholds[i_rec], fit_x.shape[1], int(cells.sum()),
                            int((max_act > 0).sum()), units)


def board_probe_accuracy(fit_x: torch.Tensor, fit_boards: torch.Tensor, test_x: torch.Tensor,
                         test_boards: torch.Tensor, squares: list[int] | None = None,
                         seed: int = 0) -> dict[str, float]:
    """Supervised upper bound: a logistic probe per square (13 classes) on fit_x, accuracy on
    test_x. Returns mean accuracy and mean macro-F1 over the probed squares."""
    from workbench.probes import train_probe

    squares = list(range(N_SQUARES)) if squares is None else squares
    accs, f1s = [], []
    for sq in squares:
        classes = fit_boards[:, sq].unique()
        if len(classes) == 1:  # one class seen (e.g. an untouched corner): predict it
            accs.append(float((test_boards[:, sq] == classes[0]).float().mean()))
            continue
        probe = train_probe(fit_x, fit_boards[:, sq].tolist(), kind="logistic", val_fraction=0,
                            seed=seed)
        m = probe.evaluate(test_x, test_boards[:, sq].tolist())
        accs.append(m["accuracy"])
        f1s.append(m["macro_f1"])
    return {"probe_accuracy": float(np.mean(accs)), "probe_macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
            "probe_squares": len(squares)}


@torch.no_grad()
def router_score_l0(model: HookedTransformer, tokens: torch.Tensor,
                    max_pairs: int = 2000, seed: int = 0) -> dict:
    """Pearson r between MoE-X routing scores and each expert's true firing fraction (L0 / D)
    on `tokens` [batch, pos], over all (token, expert) pairs of every MoE layer; plus expert
    load (share of assignments) and dead experts.

    Returns {} for a model without MoE layers, else
        router_l0_r            mean over layers of r
        router_l0_r_per_layer  [n_moe_layers] r
        expert_load            [n_moe_layers][n_experts] share of the (token, slot) assignments
        dead_experts           experts (over all layers) that no token chose
        router_games           rows of `tokens` (games) they were measured on
        router_pairs           per layer {"layer", "expert", "score", "l0"}: a seeded random
                               sample of at most `max_pairs` of the (token, expert) pairs that r
                               is computed from (for the score-vs-L0 scatter)
    Padding tokens count like the others (the table feeds whole rows of padded games).
    """
    from workbench.models.moex import MoEMLP, sparsity_scores

    if not any(isinstance(b.mlp, MoEMLP) for b in model.blocks):
        return {}
    moe = [i for i, b in enumerate(model.blocks) if isinstance(b.mlp, MoEMLP)]
    names = [f"blocks.{i}.ln2.hook_normalized" for i in moe]
    names += [f"blocks.{i}.mlp.hook_experts" for i in moe]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    gen = torch.Generator().manual_seed(seed)
    rs, loads, pairs, dead = [], [], [], 0
    for i in moe:
        layer = model.blocks[i].mlp
        x = cache[f"blocks.{i}.ln2.hook_normalized"].reshape(-1, model.cfg.d_model)
        score = sparsity_scores(x, layer.W_in, layer.b_in)  # [N, M]
        fired = layer.expert_firing(x)  # [N, M]
        rs.append(float(torch.corrcoef(torch.stack([score.flatten(), fired.flatten()]))[0, 1]))
        counts = torch.bincount(cache[f"blocks.{i}.mlp.hook_experts"].flatten(),
                                minlength=layer.spec.n_experts).float()
        loads.append((counts / counts.sum()).tolist())
        dead += int((counts == 0).sum())
        n = score.numel()
        pick = torch.randperm(n, generator=gen)[:max_pairs].sort().values
        pairs.append({"layer": i, "expert": (pick % layer.spec.n_experts).tolist(),
                      "score": score.flatten()[pick].tolist(),
                      "l0": fired.flatten()[pick].tolist()})
    return {"router_l0_r": float(np.mean(rs)), "router_l0_r_per_layer": rs,
            "expert_load": loads, "dead_experts": dead, "router_pairs": pairs,
            "router_games": int(tokens.shape[0])}


def sae_features(sae, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """SAE feature activations [n, d_sae] of x [n, d_in] (sae-lens `encode`)."""
    device = next(sae.parameters()).device
    with torch.no_grad():
        return torch.cat([sae.encode(x[s:s + batch].to(device)).float().cpu()
                          for s in range(0, len(x), batch)])


# -- the chess lab table ---------------------------------------------------------------------
@dataclass(frozen=True)
class TableRow:
    """One row of the table: the hidden units of `model` at the eval layer's MLP, or the
    features of the SAE `sae` (trained on that model's MLP hidden)."""

    label: str
    model: str
    sae: str | None = None
    group: str = "main"  # "main" (the paper's Table 1) or "ablation"


def mlp_hidden_hook(layer: int) -> str:
    """The MLP hidden units of a block: a dense MLP's neurons or MoE-X's wide hidden vector."""
    return f"blocks.{layer}.mlp.hook_post"


def load_model_at_layer(lab: Lab, name: str, layer: int):
    """Lab model `name`, checked to have block `layer` (InvalidInputError otherwise)."""
    from workbench.models.loading import load_model

    model = load_model(name, lab=lab)
    if not 0 <= layer < model.cfg.n_layers:
        raise InvalidInputError(f"layer {layer} is outside model {name!r} "
                                f"({model.cfg.n_layers} layers)")
    return model


def evaluate_chess_table(lab: Lab, dataset: str, rows: list[TableRow], layer: int,
                         name: str | None = None, max_games: int | None = None,
                         probe_squares: list[int] | None = None, overwrite: bool = False,
                         echo=print) -> list[dict]:
    """Coverage, reconstruction, probe accuracy, val loss (and router statistics for MoE
    models) for every row; fit on the validation games, scored on the test games. Stores the
    table as an `analysis` artifact `name` (table.json + table.parquet) when a name is given."""
    import pandas as pd

    from saes import load_sae
    from workbench.data.chess import encode_games
    from workbench.lab import write_json

    if not rows:
        raise InvalidInputError("no models to evaluate; name at least one")
    hidden, resid = mlp_hidden_hook(layer), f"blocks.{layer}.hook_resid_post"
    if len({r.label for r in rows}) != len(rows):
        raise InvalidInputError("two table rows share a label; give every row its own")
    cache: dict[str, tuple] = {}
    out, units = [], {}
    for row in rows:
        if row.model not in cache:
            model = load_model_at_layer(lab, row.model, layer)
            fit = collect_board_features(model, lab, dataset, "validation", [hidden, resid],
                                         max_games)
            test = collect_board_features(model, lab, dataset, "test", [hidden, resid], max_games)
            probe = board_probe_accuracy(fit.acts[resid], fit.boards, test.acts[resid],
                                         test.boards, probe_squares)
            games = load_games(lab, dataset, "test").text.tolist()[:ROUTER_GAMES]
            router = router_score_l0(model, encode_games(model.tokenizer, games, model.cfg.n_ctx))
            cache[row.model] = (fit, test, probe, router, model)
        fit, test, probe, router, model = cache[row.model]
        fit_x, test_x = fit.acts[hidden], test.acts[hidden]
        if row.sae is not None:
            sae = load_sae(row.sae, lab=lab)
            fit_x, test_x = sae_features(sae, fit_x), sae_features(sae, test_x)
        result = board_state_metrics(fit_x, fit.boards, test_x, test.boards)
        art = lab.get(row.model, kind="model")
        record = {"variant": row.label, "group": row.group, "model": row.model, "sae": row.sae,
                  "val_loss": art.metrics.get("val_loss"), "coverage": result.coverage,
                  "reconstruction": result.reconstruction, "features": result.n_features,
                  "alive_features": result.alive_features,
                  "best_t_coverage": result.best_t_coverage,
                  "best_t_reconstruction": result.best_t_reconstruction,
                  "coverage_by_t": result.coverage_by_t,
                  "reconstruction_by_t": result.reconstruction_by_t,
                  "tokens_per_s": art.metrics.get("tokens_per_s"), **probe,
                  **router}
        out.append(record)
        units[row.label] = result.units
        echo(f"{row.label:<22} val_loss {record['val_loss']:.4f}  coverage {result.coverage:.3f}"
             f"  reconstruction {result.reconstruction:.3f}  probe {probe['probe_accuracy']:.3f}")
    if name is not None:
        flat = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in out]
        with lab.new_artifact("analysis", name, parents=sorted({r.model for r in rows}),
                              config={"dataset": dataset, "layer": layer, "hook": hidden,
                                      "rows": [r.__dict__ for r in rows],
                                      "thresholds": list(THRESHOLDS)},
                              overwrite=overwrite) as writer:
            write_json(writer.path / "table.json", out)
            pd.DataFrame(flat).to_parquet(writer.path / "table.parquet", index=False)
            pd.concat([u.to_frame(label) for label, u in units.items()]).to_parquet(
                writer.path / UNITS_FILE, index=False)
            writer.manifest["analysis"] = "moex_board_state"
            writer.metrics.update({f"{r['variant']}_{m}": r[m] for r in out
                                   for m in ("coverage", "reconstruction", "val_loss")})
    return out


@dataclass
class ChessTable:
    """A stored board-state table (`evaluate_chess_table`): its records (one per row, every
    ROUTER_KEYS key present, None where the row has no MoE layer or the table predates it),
    the evaluation config (dataset, layer, hook, rows, thresholds) and the per-unit best cells
    (None for tables stored before they were kept)."""

    name: str
    records: list[dict]
    config: dict
    units: object | None  # pandas DataFrame of UnitCells.to_frame rows, or None

    def missing(self) -> list[str]:
        """What this table lacks that newer tables hold (empty when complete)."""
        out = []
        moe = [r for r in self.records if r.get("router_l0_r") is not None]
        if moe and any(r.get("router_pairs") is None or r.get("expert_load") is None
                       for r in moe):
            out.append("router (score, L0) pairs and expert load")
        if self.units is None:
            out.append("per-unit best board-state cells")
        return out

    def unit_cells(self, variant: str) -> UnitCells | None:
        if self.units is None:
            return None
        rows = self.units[self.units.variant == variant]
        return UnitCells.from_frame(rows) if len(rows) else None


def load_chess_table(lab: Lab, name: str) -> ChessTable:
    """Read a stored table artifact, old or new (see ChessTable)."""
    import pandas as pd

    from workbench.lab import read_json

    art = lab.get(name, kind="analysis")
    if art.manifest.get("analysis") != "moex_board_state":
        raise InvalidInputError(f"analysis {name!r} is not a board-state table; make one with "
                                "`workbench moex eval --name NAME ...`")
    records = read_json(art.path / "table.json", f"table {name!r}")
    if not isinstance(records, list):
        raise InvalidInputError(f"table {name!r} is damaged (table.json is not a list of rows); "
                                f"evaluate again with `workbench moex eval --name {name} "
                                "--overwrite ...`")
    for r in records:
        for key in ROUTER_KEYS:
            r.setdefault(key, None)
    units_path = art.path / UNITS_FILE
    units = pd.read_parquet(units_path) if units_path.exists() else None
    return ChessTable(name, records, dict(art.config), units)


def format_table(records: list[dict]) -> str:
    """The table in the shape of the paper's Table 1, then the ablation rows."""
    header = (f"{'variant':<22} {'val loss':>9} {'coverage':>9} {'reconstr.':>9} {'probe':>7} "
              f"{'features':>8} {'r(s,L0)':>8}")
    lines = [header]
    for group in ("main", "ablation"):
        chosen = [r for r in records if r["group"] == group]
        if not chosen:
            continue
        lines.append(f"-- {group}")
        for r in chosen:
            rr = r.get("router_l0_r")
            lines.append(
                f"{r['variant']:<22} {r['val_loss']:>9.4f} {r['coverage']:>9.3f} "
                f"{r['reconstruction']:>9.3f} {r['probe_accuracy']:>7.3f} {r['features']:>8d} "
                f"{'' if rr is None else f'{rr:.3f}':>8}")
    return "\n".join(lines)
