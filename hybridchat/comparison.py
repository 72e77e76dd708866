"""Which model to choose, from saved chats: each model's speed, cost and votes, and who won the
side-by-side picks. Notebooks 06 and 08 and ``hybridchat room results`` show these tables.

Only a turn's numbers and marks are read (``NUMBERS``), never its text. A pick is a duel: the
picked reply of a pair beat the other one. The win rate's 95% interval is Wilson's (scipy), and
with more than two models in the duels, choix's Bradley-Terry model ranks them all at once, as
Chatbot Arena does, since not every model met every other.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pandas as pd

from hybridchat.costs import is_estimate
from hybridchat.store import HistoryStore, Turn

NUMBERS = ["model", "status", "first_token_ms", "latency_ms", "prompt_tokens", "completion_tokens",
           "cost_usd", "tokens_estimated", "pair", "pair_column", "picked", "vote"]
WHOLE = ["ok", "cut_off"]  # replies that ran to their end: errors and interruptions would skew the times
CONFIDENCE = 0.95


def turns_frame(turns: Iterable[Turn]) -> pd.DataFrame:
    """One row per turn, its numbers only; ``NaN`` where a turn has none (saved before the field)."""
    frame = pd.DataFrame([turn.model_dump(include=set(NUMBERS)) for turn in turns], columns=NUMBERS)
    measured = ["first_token_ms", "latency_ms", "prompt_tokens", "completion_tokens", "cost_usd"]
    frame[measured] = frame[measured].apply(pd.to_numeric)
    frame["first_token_s"], frame["latency_s"] = frame.first_token_ms / 1000, frame.latency_ms / 1000
    frame["tokens_per_s"] = frame.completion_tokens / frame.latency_s
    return frame


def read_turns(store: HistoryStore, sessions: int = 100) -> pd.DataFrame:
    """The turns of the store's newest ``sessions`` sessions, everyone's."""
    summaries = store.list_sessions(None, limit=sessions)
    return turns_frame(turn for summary in summaries for turn in store.load(summary.session_id))


def per_model(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model: whole replies, median time to first token and tokens per second, the cost of
    1,000 such turns (the mean cost times 1,000; ``cost_is_estimate`` for a share of GPU hours)
    and the thumbs."""
    whole = frame[frame.status.isin(WHOLE)]
    table = whole.groupby("model").agg(
        turns=("status", "size"), first_token_s=("first_token_s", "median"), tokens_per_s=("tokens_per_s", "median"),
        usd_per_1000_turns=("cost_usd", lambda cost: cost.mean() * 1000),
    )
    votes = frame.groupby("model").vote.value_counts().unstack(fill_value=0)
    for vote in ("up", "down"):
        table[f"thumbs_{vote}"] = votes.get(vote, 0)
    table["cost_is_estimate"] = [is_estimate(model) for model in table.index]
    return table.fillna({"thumbs_up": 0, "thumbs_down": 0}).astype({"thumbs_up": int, "thumbs_down": int}).round(
        {"first_token_s": 2, "tokens_per_s": 1, "usd_per_1000_turns": 4})


def duels(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per decided pick of two different models: ``winner``, ``loser``, ``winner_column``
    (0: the left reply won, which tells of a bias to the left)."""
    paired = frame[frame.pair.notna() & frame.picked.notna()]
    rows = []
    for _, members in paired.groupby("pair"):
        won, lost = members[members.picked == True], members[members.picked == False]  # noqa: E712 (a column)
        if len(won) == 1 and len(lost) == 1 and won.model.iloc[0] != lost.model.iloc[0]:
            rows.append({"winner": won.model.iloc[0], "loser": lost.model.iloc[0],
                         "winner_column": won.pair_column.iloc[0]})
    return pd.DataFrame(rows, columns=["winner", "loser", "winner_column"])


def win_rates(picks: pd.DataFrame) -> pd.DataFrame:
    """Per pair of models met in ``picks``: how often the first won, with its 95% interval."""
    from scipy.stats import binomtest

    rows = []
    for first, second in itertools.combinations(sorted({*picks.winner, *picks.loser}), 2):
        met = picks[picks.winner.isin([first, second]) & picks.loser.isin([first, second])]
        if met.empty:
            continue
        wins = int((met.winner == first).sum())
        interval = binomtest(wins, len(met)).proportion_ci(CONFIDENCE, method="wilson")
        rows.append({"model": first, "against": second, "picks": len(met), "wins": wins,
                     "win_rate": wins / len(met), "low": interval.low, "high": interval.high})
    return pd.DataFrame(rows, columns=["model", "against", "picks", "wins", "win_rate", "low", "high"]).round(3)


def strengths(picks: pd.DataFrame) -> pd.DataFrame:
    """Every model in ``picks`` on one Bradley-Terry scale (choix), strongest first: ``score``
    is a log-strength, and ``beats_average`` the chance it beats a model of score 0."""
    import choix
    import numpy as np

    models = sorted({*picks.winner, *picks.loser})
    index = {model: i for i, model in enumerate(models)}
    data = [(index[w], index[lost]) for w, lost in zip(picks.winner, picks.loser, strict=True)]
    # A little regularisation: with a model that never lost, the plain estimate has no finite answer.
    scores = choix.ilsr_pairwise(len(models), data, alpha=0.01)
    table = pd.DataFrame({"model": models, "score": scores, "beats_average": 1 / (1 + np.exp(-scores))})
    return table.sort_values("score", ascending=False).reset_index(drop=True).round(3)


def verdict(rates: pd.DataFrame, challenger: str, incumbent: str) -> str:
    """One sentence: did ``challenger`` do as well as ``incumbent`` in the picks?"""
    row = rates[(rates.model == challenger) & (rates.against == incumbent)]
    flipped = rates[(rates.model == incumbent) & (rates.against == challenger)]
    if row.empty and flipped.empty:
        return f"No picks between {challenger} and {incumbent} yet."
    if row.empty:
        (_, found), = flipped.iterrows()
        wins, picks, low, high = found.picks - found.wins, found.picks, 1 - found.high, 1 - found.low
    else:
        (_, found), = row.iterrows()
        wins, picks, low, high = found.wins, found.picks, found.low, found.high
    said = f"{challenger} was picked in {wins} of {picks} ({wins / picks:.0%}; 95% interval {low:.0%}-{high:.0%})"
    if high < 0.5:
        return f"{said}: {incumbent} answered these better."
    if low > 0.5:
        return f"{said}: {challenger} answered these better."
    return (f"{said}: no clear difference over {picks} picks, so {challenger} is good enough for these, "
            "as far as they can tell; more prompts narrow the interval, and cost and speed can decide.")
