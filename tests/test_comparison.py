"""Choosing a model from saved chats (hybridchat.comparison): speed, cost and votes per model, the
picks' win rates with their interval, Bradley-Terry for more models; and notebook 08's blind test,
whose clicks are the app's picks, read back from the store."""

from __future__ import annotations

import pytest
from conftest import api_key_client
from scipy.stats import binomtest

from hybridchat import comparison
from hybridchat.backends import GenerationParams, VllmBackend, VllmClient
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.chat import ChatService
from hybridchat.lab.blind import BlindTest
from hybridchat.store import Turn, open_store


def pair(winner: str, loser: str, n: int, *, winner_left: bool = True) -> list[Turn]:
    turns = []
    for i in range(n):
        columns = (0, 1) if winner_left else (1, 0)
        turns += [Turn(user="q", model=winner, reply="w", pair=f"{winner}-{loser}-{i}", pair_column=columns[0], picked=True),
                  Turn(user="q", model=loser, reply="l", pair=f"{winner}-{loser}-{i}", pair_column=columns[1], picked=False)]
    return turns


def test_per_model_takes_the_medians_of_whole_replies_the_cost_of_a_thousand_turns_and_the_thumbs():
    frame = comparison.turns_frame([
        Turn(user="a", model="gemini", reply="x", first_token_ms=200, latency_ms=1000, completion_tokens=40,
             cost_usd=0.0002, vote="up"),
        Turn(user="b", model="gemini", reply="x", first_token_ms=400, latency_ms=2000, completion_tokens=40,
             cost_usd=0.0004, vote="down"),
        Turn(user="c", model="gemini", reply="", status="error", latency_ms=90_000, vote="down"),
        Turn(user="d", model="gemma", reply="x", first_token_ms=100, latency_ms=500, completion_tokens=50,
             cost_usd=0.0001),
        Turn(user="e", model="gemma", reply="x"),  # saved before the figures: NaN, left out
    ])
    table = comparison.per_model(frame)
    assert table.loc["gemini", "turns"] == 2, "the error is not a whole reply"
    assert table.loc["gemini", "first_token_s"] == 0.3 and table.loc["gemini", "tokens_per_s"] == 30.0
    assert table.loc["gemini", "usd_per_1000_turns"] == 0.3
    assert (table.loc["gemini", "thumbs_up"], table.loc["gemini", "thumbs_down"]) == (1, 2), "the error's vote counts"
    assert table.loc["gemma", "usd_per_1000_turns"] == 0.1 and table.loc["gemma", "tokens_per_s"] == 100.0


def test_the_win_rate_and_its_interval_are_wilsons_and_the_verdict_reads_them():
    frame = comparison.turns_frame(pair("gemma", "gemini", 7) + pair("gemini", "gemma", 3, winner_left=False))
    picks = comparison.duels(frame)
    assert len(picks) == 10 and (picks.winner_column == 0).sum() == 7
    [row] = comparison.win_rates(picks).to_dict("records")
    wilson = binomtest(3, 10).proportion_ci(0.95, method="wilson")
    assert (row["model"], row["against"], row["wins"], row["picks"]) == ("gemini", "gemma", 3, 10)
    assert row["low"] == round(wilson.low, 3) and row["high"] == round(wilson.high, 3)
    said = comparison.verdict(comparison.win_rates(picks), "gemma", "gemini")
    assert said.startswith("gemma was picked in 7 of 10 (70%; 95% interval 40%-89%): no clear difference"), said
    lopsided = comparison.win_rates(comparison.duels(comparison.turns_frame(pair("gemini", "gemma", 12))))
    assert comparison.verdict(lopsided, "gemma", "gemini").endswith("gemini answered these better.")
    assert comparison.verdict(lopsided, "my_gemma", "gemini") == "No picks between my_gemma and gemini yet."


def test_an_unpicked_pair_or_one_model_against_itself_is_no_duel():
    turns = [Turn(user="q", model="gemma", reply="a", pair="p", pair_column=0),
             Turn(user="q", model="gemini", reply="b", pair="p", pair_column=1),
             *pair("gemini", "gemini", 2)]
    assert comparison.duels(comparison.turns_frame(turns)).empty


def test_bradley_terry_ranks_three_models_that_did_not_all_meet():
    picks = comparison.duels(comparison.turns_frame(
        pair("gemini", "gemma", 6) + pair("gemma", "gemini", 2) + pair("gemma", "my_gemma", 6) + pair("my_gemma", "gemma", 2)))
    ranked = comparison.strengths(picks)
    assert list(ranked.model) == ["gemini", "gemma", "my_gemma"], "gemini beat gemma, who beat my_gemma: never met"
    assert ranked.beats_average.is_monotonic_decreasing and 0 < ranked.beats_average.min() < 0.5


@pytest.fixture
def service(stand_in, tmp_path):
    backends = {"gemma": VllmBackend(VllmClient(stand_in), label="Gemma"),
                "gemini": GeminiBackend(api_key_client(stand_in), label="Gemini")}
    return ChatService(backends, open_store(f"sqlite:///{tmp_path}/h.db"))


def test_the_blind_tests_clicks_are_the_apps_picks_saved_in_the_store(service):
    test = BlindTest(service, ("gemma", "gemini"), seed=3)
    test.ask(["Name a colour.", "Name a fruit.", "Name a city.", "  "], GenerationParams(max_tokens=6))
    shown = test.widget()
    assert "0 picked, 3 to pick" in shown.children[0].value, "the empty prompt is refused, not asked"
    assert test.duels[3].failed[0] and not test.duels[3].can_pick(0)
    assert {duel.models for duel in test.duels[:3]} == {("gemma", "gemini"), ("gemini", "gemma")}, "drawn order"
    assert "Gemma" not in shown.children[2].children[0].children[0].value, "blind: no name until revealed"
    test.pick_by(lambda a, b: 0)  # clicks the A buttons
    assert "3 picked, 0 to pick" in shown.children[0].value
    with pytest.raises(ValueError):
        test.pick(0, 1)  # one pick per prompt
    revealed = test.revealed()
    assert list(revealed.picked[:3]) == [duel.models[0] for duel in test.duels[:3]]
    for duel in test.duels[:3]:  # saved through the app's pick, as the page saves it
        saved = {t.pair_column: t.picked for t in service.store.load(duel.conversation.session_id)}
        assert saved == {0: True, 1: False}
    per_model, rates, said = test.results()
    assert set(per_model.index) == {"gemma", "gemini"} and per_model.turns.sum() == 6
    gemma_wins = sum(duel.models[0] == "gemma" for duel in test.duels[:3])
    assert rates.picks.sum() == 3 and said.startswith(f"gemma was picked in {gemma_wins} of 3")
