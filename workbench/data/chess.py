"""Chess games as character-level PGN text with the exact board state at every move.

    art = build_chess_dataset(lab, "chess", ChessDataConfig(n_games=4000))
    tok = save_chess_tokenizer(lab, "chess-tok")
    boards = load_board_states(lab, "chess", "test")   # BoardStates

Games are played with python-chess by a seeded policy ("random": a uniformly random legal move;
"capture": a random capture when one exists, else a random move), one seed per game, in worker
processes (results do not depend on the number of workers). A game is written as
";1.e4 e5 2.Nf3 Nc6 ..." (Karvonen et al.'s format: ';' opens the game, move numbers glued to
white's move, SAN moves) and cut at the last whole move that fits in `max_chars` (1023) characters.

Board state: at every "." of the text (the moment before white's move N is written) the board
after black's move N-1 is recorded as 64 square labels (a1 = 0, b1 = 1, ..., h8 = 63) with 13
classes: 0 empty, 1-6 white P N B R Q K, 7-12 black p n b r q k (`PIECE_CLASSES`).

The dataset is a `corpus` artifact (so the LM trainer reads it like any corpus, with
`packing="document"`): `train.parquet`, `validation.parquet`, `test.parquet` (columns doc_id,
text, language="chess", source=policy) and per split `boards_<split>.safetensors` with
    boards   [n_positions, 64] int8   piece class per square
    doc_ids  [n_positions]    int64  the game (doc_id) of the position
    char_pos [n_positions]    int32  index of the "." in the game's text (token position
                                     char_pos + 1 in a BOS-prefixed model input)
The tokenizer has the 32 PGN symbols plus BOS/EOS/PAD (`CHESS_SYMBOLS`), one token per character.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import chess
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from workbench.data.store import CORPUS_COLUMNS, write_split
from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Artifact, Lab

CHESS_SYMBOLS = " #+-.0123456789;=BKNOQRabcdefghx"  # the 32 characters of the PGN strings
assert len(CHESS_SYMBOLS) == 32
POLICIES = ("random", "capture")
SPLITS = ("train", "validation", "test")
PIECE_CLASSES = ("empty", "P", "N", "B", "R", "Q", "K", "p", "n", "b", "r", "q", "k")
N_SQUARES = 64


@dataclass(frozen=True)
class ChessDataConfig:
    """How many games, which policies, how long, how split.

    n_games: total games (split by game into train / validation / test by the fractions).
    policies: game policies, used in turn (game i plays policies[i % len(policies)]).
    max_chars: longest PGN string (the text is cut at the last whole move that fits).
    max_plies: stop a game after this many half-moves (None: until it ends or fills max_chars).
    """

    n_games: int = 4000
    policies: tuple[str, ...] = POLICIES
    max_chars: int = 1023
    max_plies: int | None = None
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    seed: int = 0
    workers: int = 2

    def validate(self) -> None:
        if self.n_games < 3:
            raise InvalidInputError(f"n_games must be >= 3 (one game per split), got {self.n_games}")
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise InvalidInputError(f"unknown chess policies {bad}; choose from {POLICIES}")
        if self.max_chars < 8:
            raise InvalidInputError(f"max_chars must be >= 8, got {self.max_chars}")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise InvalidInputError("val_fraction and test_fraction must be in (0, 1) with a "
                                    "sum below 1")


# -- one game --------------------------------------------------------------------------------
def board_labels(board: chess.Board) -> list[int]:
    """The 64 square labels (PIECE_CLASSES indices) of `board`, a1 first."""
    labels = [0] * N_SQUARES
    for square, piece in board.piece_map().items():
        labels[square] = piece.piece_type + (0 if piece.color == chess.WHITE else 6)
    return labels


def choose_move(board: chess.Board, policy: str, rng: random.Random) -> chess.Move:
    moves = list(board.legal_moves)
    if policy == "capture":
        captures = [m for m in moves if board.is_capture(m)]
        if captures:
            return rng.choice(captures)
    return rng.choice(moves)


def play_game(seed: int, policy: str, max_chars: int = 1023,
              max_plies: int | None = None) -> tuple[str, list[tuple[int, list[int]]]]:
    """Play one game; returns (pgn text, [(char index of each ".", board labels there)])."""
    rng = random.Random(seed)
    board = chess.Board()
    text = ";"
    positions: list[tuple[int, list[int]]] = []
    plies = 0
    while not board.is_game_over(claim_draw=False) and (max_plies is None or plies < max_plies):
        move = choose_move(board, policy, rng)
        san = board.san(move)
        if board.turn == chess.WHITE:
            prefix = f"{'' if board.fullmove_number == 1 else ' '}{board.fullmove_number}."
            piece = prefix + san
            dot = len(text) + len(prefix) - 1
        else:
            piece, dot = " " + san, None
        if len(text) + len(piece) > max_chars:
            break
        if dot is not None:
            positions.append((dot, board_labels(board)))
        text += piece
        board.push(move)
        plies += 1
    return text, positions


def _play_job(args: tuple[int, str, int, int | None]):
    return play_game(*args)


def _replay(text: str) -> Iterator[tuple[int, chess.Board]]:
    """Replay a PGN string of this format: (index of each ".", the board there). The board is
    the live replay board (moves are pushed after each yield): copy it to keep it."""
    if not text.startswith(";"):
        raise InvalidInputError("a chess game string starts with ';'")
    board = chess.Board()
    pos = 1
    for token in text[1:].split(" "):
        start, pos = pos, pos + len(token) + 1
        san = token
        if "." in token:
            number, _, san = token.partition(".")
            yield start + len(number), board
        try:
            board.push_san(san)
        except ValueError as exc:
            raise InvalidInputError(f"the game string has an illegal or unreadable move "
                                    f"{san!r} at character {start}: {exc}") from exc


def parse_pgn_positions(text: str) -> list[tuple[int, list[int]]]:
    """Replay a PGN string of this format and return the board at each "." (for checking)."""
    return [(dot, board_labels(board)) for dot, board in _replay(text)]


def dot_positions(text: str) -> list[int]:
    """Indices of the "." characters of a game string (the positions with a known board)."""
    return [i for i, ch in enumerate(text) if ch == "."]


def board_at(text: str, dot: int) -> chess.Board:
    """The board (python-chess) at the "." with index `dot` of a game string: the position
    before white's move of that number is played (the board `load_board_states` records)."""
    for at, board in _replay(text):
        if at == dot:
            return board.copy(stack=False)
        if at > dot:
            break
    dots = dot_positions(text)
    shown = ", ".join(map(str, dots[:8])) + (" ..." if len(dots) > 8 else "")
    raise InvalidInputError(f"character {dot} of the game is not a '.' (before a white move); "
                            f"choose one of its {len(dots)} '.' positions: {shown}")


# -- the dataset -----------------------------------------------------------------------------
@dataclass
class BoardStates:
    """Board labels at the "." positions of one split (see the module docstring)."""

    boards: torch.Tensor  # [n, 64] int8
    doc_ids: torch.Tensor  # [n] int64
    char_pos: torch.Tensor  # [n] int32

    def __len__(self) -> int:
        return len(self.doc_ids)


def generate_games(cfg: ChessDataConfig) -> list[tuple[str, str, list]]:
    """(policy, text, positions) for every game, in game order."""
    jobs = [(cfg.seed * 1_000_003 + i, cfg.policies[i % len(cfg.policies)], cfg.max_chars,
             cfg.max_plies) for i in range(cfg.n_games)]
    if cfg.workers > 1:
        with multiprocessing.get_context("spawn").Pool(cfg.workers) as pool:
            results = pool.map(_play_job, jobs, chunksize=max(1, len(jobs) // (cfg.workers * 8)))
    else:
        results = [_play_job(j) for j in jobs]
    return [(job[1], text, positions) for job, (text, positions) in zip(jobs, results)]


def build_chess_dataset(lab: Lab, name: str, cfg: ChessDataConfig | None = None,
                        overwrite: bool = False) -> Artifact:
    """Generate the games and store them as a corpus artifact with board states per split."""
    cfg = cfg or ChessDataConfig()
    cfg.validate()
    games = generate_games(cfg)
    order = torch.randperm(len(games), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_val = max(1, round(cfg.val_fraction * len(games)))
    n_test = max(1, round(cfg.test_fraction * len(games)))
    split_of = {}
    for rank, game in enumerate(order):
        split_of[game] = "validation" if rank < n_val else "test" if rank < n_val + n_test else "train"
    with lab.new_artifact("corpus", name, config={"chess": asdict(cfg)},
                          overwrite=overwrite) as art:
        counts = {}
        for split in SPLITS:
            ids = [i for i in range(len(games)) if split_of[i] == split]
            frame = pd.DataFrame({
                "doc_id": pd.Series(ids, dtype="int64"),
                "text": [games[i][1] for i in ids],
                "language": "chess",
                "source": [games[i][0] for i in ids],
            })
            write_split(art.path, split, frame)
            boards, doc_ids, char_pos = [], [], []
            for i in ids:
                for dot, labels in games[i][2]:
                    boards.append(labels)
                    doc_ids.append(i)
                    char_pos.append(dot)
            save_file({
                "boards": torch.tensor(boards, dtype=torch.int8).reshape(-1, N_SQUARES),
                "doc_ids": torch.tensor(doc_ids, dtype=torch.int64),
                "char_pos": torch.tensor(char_pos, dtype=torch.int32),
            }, str(art.path / f"boards_{split}.safetensors"))
            counts[split] = {"games": len(ids), "positions": len(doc_ids),
                             "characters": int(frame.text.str.len().sum())}
        art.manifest.update({"languages": ["chess"], "chess": True, "splits": counts,
                             "piece_classes": list(PIECE_CLASSES)})
        art.metrics.update({f"{s}_games": c["games"] for s, c in counts.items()})
        art.metrics["mean_chars"] = sum(c["characters"] for c in counts.values()) / len(games)
    return lab.get(name, kind="corpus")


def _chess_artifact(lab: Lab, name: str) -> Artifact:
    art = lab.get(name, kind="corpus")
    if not art.manifest.get("chess"):
        raise InvalidInputError(f"corpus {name!r} is not a chess dataset; build one with "
                                "`workbench lab build chess`")
    return art


def load_games(lab: Lab, name: str, split: str) -> pd.DataFrame:
    """The games of a split (doc_id, text, language, source)."""
    if split not in SPLITS:
        raise InvalidInputError(f"unknown chess split {split!r}; use one of {SPLITS}")
    path = _chess_artifact(lab, name).path / f"{split}.parquet"
    if not path.exists():
        raise NotFoundError(f"chess split {split!r} is missing ({path}); rebuild the dataset")
    return pd.read_parquet(path, columns=list(CORPUS_COLUMNS))


def load_board_states(lab: Lab, name: str, split: str) -> BoardStates:
    if split not in SPLITS:
        raise InvalidInputError(f"unknown chess split {split!r}; use one of {SPLITS}")
    path = _chess_artifact(lab, name).path / f"boards_{split}.safetensors"
    try:
        data = load_file(str(path))
    except (SafetensorError, OSError, FileNotFoundError) as exc:
        raise NotFoundError(f"board states {path} are missing or damaged ({exc}); rebuild the "
                            "chess dataset") from exc
    return BoardStates(data["boards"], data["doc_ids"], data["char_pos"])


# -- tokenizer -------------------------------------------------------------------------------
def chess_tokenizer():
    """Character-level tokenizer: BOS/EOS/PAD (ids 0-2) + the 32 PGN symbols (ids 3-34)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    from workbench.models.tokenizer import SPECIAL_TOKENS, wrap_tokenizer

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHESS_SYMBOLS:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[2]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return wrap_tokenizer(core)


def save_chess_tokenizer(lab: Lab, name: str, overwrite: bool = False) -> Artifact:
    from workbench.models.tokenizer import save_tokenizer_artifact

    return save_tokenizer_artifact(lab, name, chess_tokenizer(),
                                   config={"type": "chess characters", "symbols": CHESS_SYMBOLS},
                                   overwrite=overwrite)


def encode_games(tokenizer, texts: list[str], n_ctx: int) -> torch.Tensor:
    """BOS + characters of each game, truncated to n_ctx and right-padded: [n, n_ctx] int64."""
    unknown = set("".join(texts)) - set(CHESS_SYMBOLS)
    if unknown:
        raise InvalidInputError(f"chess games hold characters outside the 32 PGN symbols: "
                                f"{sorted(unknown)}")
    rows = torch.full((len(texts), n_ctx), tokenizer.pad_token_id, dtype=torch.long)
    for i, ids in enumerate(tokenizer(texts)["input_ids"]):
        ids = ids[:n_ctx]
        rows[i, :len(ids)] = torch.tensor(ids)
    return rows


def dataset_path(lab: Lab, name: str) -> Path:
    return _chess_artifact(lab, name).path
