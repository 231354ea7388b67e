"""`boundary_index`: which member token speaks for which seed token (named sharp edges)."""

from __future__ import annotations

from lmfuse.ensemble.align import boundary_index


def test_member_token_shorter_than_the_seed_token_abstains() -> None:
    # Qwen reads "):\n" as ")" + ":\n"; a GPT-2-style member reads ")" + ":" + "\n". Its ":" would
    # veto the seed's ":\n" in a product fusion, so it abstains there; the ")" tokens agree.
    text = "f(x):\n"
    seed = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 6)]  # f ( x ) :\n
    member = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]  # f ( x ) : \n
    assert boundary_index(text, seed, member) == [0, 1, 2, 3, -1]


def test_member_token_longer_than_the_seed_token_is_present() -> None:
    text = "a :\n"
    seed = [(0, 1), (1, 3), (3, 4)]  # a, " :", "\n"
    member = [(0, 1), (1, 4)]  # a, " :\n"
    assert boundary_index(text, seed, member) == [0, 1, -1]  # "\n" starts inside the member's token


def test_whitespace_dropping_member_matches_by_content_start() -> None:
    text = "to be"
    seed = [(0, 2), (2, 5)]  # "to", " be"
    wordpiece = [(0, 2), (3, 5)]  # "to", "be" (the space dropped)
    assert boundary_index(text, seed, wordpiece) == [0, 1]
