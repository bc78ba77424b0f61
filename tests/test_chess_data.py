"""Chess games: PGN text and board states line up; splits by game; tokenizer round trip."""

from __future__ import annotations

import chess
import pytest
import torch
from moex_fixtures import build_chess_lab

from workbench.data.chess import (
    CHESS_SYMBOLS,
    PIECE_CLASSES,
    ChessDataConfig,
    board_labels,
    chess_tokenizer,
    encode_games,
    generate_games,
    load_board_states,
    load_games,
    parse_pgn_positions,
    play_game,
)
from workbench.errors import InvalidInputError


def test_known_game_boards_at_each_dot():
    text = ";1.e4 e5 2.Nf3 Nc6 3.Bb5 a6"
    positions = parse_pgn_positions(text)
    assert [p for p, _ in positions] == [2, 10, 20]
    assert all(text[p] == "." for p, _ in positions)
    start = positions[0][1]
    assert PIECE_CLASSES[start[chess.E2]] == "P" and PIECE_CLASSES[start[chess.E8]] == "k"
    after_1 = positions[1][1]  # before 2.Nf3: e4 and e5 played
    assert after_1[chess.E2] == 0 and PIECE_CLASSES[after_1[chess.E4]] == "P"
    assert PIECE_CLASSES[after_1[chess.E5]] == "p" and after_1[chess.E7] == 0
    after_2 = positions[2][1]  # before 3.Bb5
    assert PIECE_CLASSES[after_2[chess.F3]] == "N" and PIECE_CLASSES[after_2[chess.C6]] == "n"
    assert after_2[chess.G1] == 0 and after_2[chess.B8] == 0


@pytest.mark.parametrize("policy", ["random", "capture"])
def test_generated_games_replay_to_their_recorded_boards(policy):
    for seed in range(3):
        text, positions = play_game(seed, policy, max_chars=400)
        assert text.startswith(";1.") and len(text) <= 400
        assert set(text) <= set(CHESS_SYMBOLS)
        assert parse_pgn_positions(text) == positions
    assert play_game(7, policy) == play_game(7, policy)  # seeded


def test_capture_policy_captures_more_than_random():
    random_x = sum(play_game(s, "random", 600)[0].count("x") for s in range(6))
    capture_x = sum(play_game(s, "capture", 600)[0].count("x") for s in range(6))
    assert capture_x > random_x


def test_multiprocess_generation_equals_serial():
    cfg = ChessDataConfig(n_games=6, max_chars=120, workers=1)
    assert generate_games(cfg) == generate_games(ChessDataConfig(n_games=6, max_chars=120,
                                                                 workers=2))


def test_dataset_artifact_splits_by_game_and_boards_align(tmp_path):
    lab = build_chess_lab(tmp_path / "lab", n_games=30)
    seen = set()
    for split in ("train", "validation", "test"):
        games = load_games(lab, "chess", split)
        boards = load_board_states(lab, "chess", split)
        assert len(games) > 0 and not (set(games.doc_id) & seen)
        seen |= set(games.doc_id)
        texts = dict(zip(games.doc_id, games.text))
        first = boards.doc_ids[0].item()
        rows = (boards.doc_ids == first).nonzero().flatten()
        expected = parse_pgn_positions(texts[first])
        assert boards.char_pos[rows].tolist() == [p for p, _ in expected]
        assert torch.equal(boards.boards[rows].long(), torch.tensor([b for _, b in expected]))
    assert len(seen) == 30


def test_tokenizer_is_one_token_per_character():
    tok = chess_tokenizer()
    assert len(tok) == 35
    text = ";1.e4 e5 2.Qh5 Nc6 3.Bc4 Nf6 4.Qxf7#"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids[1:]) == text
    rows = encode_games(tok, [text, ";1.d4"], n_ctx=8)
    assert rows.shape == (2, 8) and rows[1, 6:].tolist() == [tok.pad_token_id] * 2
    with pytest.raises(InvalidInputError, match="outside the 32 PGN symbols"):
        encode_games(tok, [";1.e4 {comment}"], n_ctx=8)


def test_board_labels_of_the_start_position():
    labels = board_labels(chess.Board())
    assert sum(1 for v in labels if v) == 32
    assert PIECE_CLASSES[labels[chess.A1]] == "R" and PIECE_CLASSES[labels[chess.D8]] == "q"


def test_bad_config():
    with pytest.raises(InvalidInputError, match="unknown chess policies"):
        ChessDataConfig(policies=("minimax",)).validate()
