"""Context that fits: a chat longer than the model's context goes on, the store keeps it whole.

Against the in-process tiny model (a 512-token context, exact counts from its tokenizer) and the
stand-in over HTTP (vLLM's /tokenize, /v1/models and its 400s); the same scenarios run against
the real vLLM engine in test_vllm_engine.py.
"""

from __future__ import annotations

import itertools

import pytest
from conftest import Recording, api_key_client, vertex_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridchat.backends import (
    ContextWindow,
    GeminiBackend,
    GenerationParams,
    LocalBackend,
    RetryPolicy,
    VllmBackend,
    VllmClient,
    estimate_tokens,
)
from hybridchat.chat import ChatService, Conversation
from hybridchat.config import Settings
from hybridchat.context import fit_context
from hybridchat.errors import BackendUnavailable, InputRefused
from hybridchat.history import Message, conversation, process_message_openai
from hybridchat.serve_local import STAND_IN_PREFIX
from hybridchat.store import Turn, open_store

PARAMS = GenerationParams(temperature=0, max_tokens=16)
SENTENCE = "The capital of France is Paris. "


def chat(service: ChatService, conversation: Conversation, messages: list[str], model: str = "local") -> list[Turn]:
    for message in messages:
        *_, last = service.respond(conversation, message, model, PARAMS)
        assert last.turn is not None
    return conversation.turns


@pytest.fixture
def store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/history.db", resilient=False)
    yield store
    store.close()


def message(number: int, sentences: int = 4) -> str:
    return f"Question {number}: " + SENTENCE * sentences


def test_a_chat_that_outgrows_the_context_goes_on_and_the_store_keeps_it_whole(tiny_model, store):
    backend = Recording(LocalBackend(model=tiny_model))
    service = ChatService({"local": backend}, store)
    conversation = Conversation("alice")
    turns = chat(service, conversation, [message(n) for n in range(14)])

    assert [t.status for t in turns] == ["cut_off"] * 14, "every turn answered (the tiny model runs to max tokens)"
    assert [t.user for t in store.load(conversation.session_id)] == [message(n) for n in range(14)]
    starts = [t.context_start for t in turns]
    assert starts == sorted(starts) and starts[-1] > 0, "the oldest turns were left out"
    # Told once per block left out, in the chat: on the turns whose start moved, only.
    moved = [i for i in range(1, 14) if starts[i] > starts[i - 1]]
    assert [i for i, t in enumerate(turns) if t.notice] == moved
    # What the model saw: the chat's first turns, the newest from the start on, then the new message.
    sent = [m.content for m in backend.histories[-1] if m.role == "user"]
    first_turns = sent[:sent.index(message(starts[-1]))]
    assert first_turns and first_turns == [message(n) for n in range(len(first_turns))], "the chat's beginning stays"
    assert sent[len(first_turns):] == [message(n) for n in range(starts[-1], 13)]
    left_out = starts[moved[0]] - len(first_turns)
    assert turns[moved[0]].notice == (f"{left_out} earlier turns were not sent to {backend.label}, to fit its context. "
                                      "They stay saved in this chat.")


def test_turns_are_left_out_in_blocks_so_the_prompts_beginning_stays_the_same(tiny_model, store):
    """vLLM's prefix cache hits only while the prompt keeps its beginning: after a block is left
    out the start stays put for several turns; leaving one turn out at a time moves it every turn."""
    messages = [message(n) for n in range(16)]
    blocks = chat(ChatService({"local": LocalBackend(model=tiny_model)}, store), Conversation("a"), messages)
    one_by_one = chat(ChatService({"local": LocalBackend(model=tiny_model)}, store, keep=1.0), Conversation("b"), messages)

    def moves(turns: list[Turn]) -> int:
        return sum(1 for before, after in itertools.pairwise(turns) if after.context_start != before.context_start)

    assert one_by_one[-1].context_start > 0 and blocks[-1].context_start > 0
    assert moves(blocks) * 2 <= moves(one_by_one), (moves(blocks), moves(one_by_one))
    # Each block leaves the prompt at most 60% of the budget: more than one turn at a time.
    assert all(after.context_start - before.context_start >= 2
               for before, after in itertools.pairwise(blocks) if after.context_start != before.context_start)


def test_the_chats_first_turns_keep_the_prompts_beginning_through_every_block_left_out(tiny_model, store):
    """Once turns are left out, the persona and the chat's first turns open every prompt, byte for
    byte (vLLM's prefix cache reuses them even on the turn a block goes); without them
    (``head=0``), the prompt after the persona changes each time."""
    messages = [message(n) for n in range(16)]
    persona = GenerationParams(temperature=0, max_tokens=16, system_prompt="You are a patient tutor.")

    def prompts(head: float) -> list[list]:
        backend = Recording(LocalBackend(model=tiny_model))
        chat = Conversation(f"head-{head}")
        for text in messages:
            list(ChatService({"local": backend}, store, head=head).respond(chat, text, "local", persona))
        return [[*history, Message("user", text)] for history, text in zip(backend.histories, messages, strict=True)]

    def shared_beginning(sent: list[list]) -> int:
        """The fewest leading messages two prompts in a row had in common (from the second on)."""
        return min(next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x))
                   for x, y in itertools.pairwise(sent[1:]))

    with_beginning, without = prompts(0.3), prompts(0.0)
    assert with_beginning[-1][0].content == messages[0] != without[-1][0].content, "turns were left out"
    assert shared_beginning(with_beginning) >= 2 > shared_beginning(without) == 0


def test_failed_turns_are_never_sent(tiny_model, store, closed_port_url):
    local = Recording(LocalBackend(model=tiny_model))
    down = VllmBackend(VllmClient(closed_port_url, model="m", retry=RetryPolicy(attempts=1), connect_timeout=1), name="down")
    service = ChatService({"local": local, "down": down}, store)
    conversation = Conversation("alice")
    chat(service, conversation, ["first"])
    chat(service, conversation, ["lost question"], model="down")
    chat(service, conversation, ["third"])
    assert [t.status for t in conversation.turns] == ["cut_off", "error", "cut_off"]
    assert [m.content for m in local.histories[-1] if m.role == "user"] == ["first"]


def test_a_message_too_long_for_the_context_is_refused_before_sending(tiny_model, store):
    service = ChatService({"local": LocalBackend(model=tiny_model)}, store)
    conversation = Conversation("alice")
    huge = SENTENCE * 200
    size = tiny_model.count_tokens(process_message_openai(huge, []))
    with pytest.raises(InputRefused) as refused:
        next(service.respond(conversation, huge, "local", PARAMS))
    # Room for the reply: max_tokens, at most an eighth of the context.
    budget = tiny_model.context_length - min(PARAMS.max_tokens, tiny_model.context_length // 8)
    assert str(refused.value) == (
        f"That message is {size:,} tokens; {service.backends['local'].label} takes {budget} at most "
        f"(its context is {tiny_model.context_length} tokens, with room for a reply). Shorten it, or send it in parts."
    )
    assert conversation.turns == [] and store.list_sessions("alice") == []


def test_max_tokens_is_cut_to_what_the_context_leaves(tiny_model, store):
    service = ChatService({"local": LocalBackend(model=tiny_model)}, store)
    conversation = Conversation("alice")
    long = GenerationParams(temperature=0, max_tokens=4096)  # the app's slider goes this far
    *_, last = service.respond(conversation, SENTENCE * 20, "local", long)
    turn = last.turn
    assert turn.status == "cut_off" and turn.error is None
    assert turn.params["max_tokens"] == tiny_model.context_length - turn.prompt_tokens == turn.completion_tokens


def test_a_context_smaller_than_configured_is_learned_from_the_servers_refusal(stand_in, tiny_model, tiny_model_dir, store):
    """Configured far too large (and the model name too, so /v1/models is not asked), the first
    fit is refused with vLLM's 400; the limit it names is learned, the turn fitted again and answered."""
    client = VllmClient(stand_in, model=f"{STAND_IN_PREFIX}{tiny_model_dir.name}", context_tokens=100_000)
    backend = Recording(VllmBackend(client))
    service = ChatService({"gemma": backend}, store)
    conversation = Conversation("alice")
    turns = chat(service, conversation, [message(n) for n in range(10)], model="gemma")
    assert [t.status for t in turns] == ["cut_off"] * 10
    assert turns[-1].context_start > 0 and any(t.notice for t in turns)
    assert backend.context_window().tokens == tiny_model.context_length
    assert len(backend.histories) == 11, "one turn was sent twice: refused, then fitted to the limit"


@pytest.mark.parametrize("make_client", [api_key_client, vertex_client], ids=["api key", "vertex ai"])
def test_gemini_through_the_real_sdk_fits_a_long_chat(stand_in, tiny_model, store, make_client):
    """Exact counts from countTokens; the input limit from models.get where the SDK gives it (the
    Gemini API; Vertex AI's model resource has none), else, as when it is configured too large,
    learned from Gemini's own 400."""
    limit = tiny_model.context_length // 2  # the stand-in's Gemini input limit
    vertex = make_client is vertex_client
    backend = GeminiBackend(make_client(stand_in), label="Gemini")
    assert backend.context_window() == (None if vertex else ContextWindow(limit, includes_reply=False))
    contents = process_message_openai("And you?", [["Hi", "Hello!"]])
    assert backend.count_tokens(conversation("And you?", [["Hi", "Hello!"]]), PARAMS) == tiny_model.count_tokens(contents)
    for configured in (None, 100_000):
        gemini = GeminiBackend(make_client(stand_in), settings=Settings(gemini_context_tokens=configured), label="Gemini")
        turns = chat(ChatService({"gemini": gemini}, store), Conversation("g"), [message(n) for n in range(6)], "gemini")
        assert all(t.status in ("ok", "cut_off") for t in turns), [t.error for t in turns]
        assert turns[-1].context_start > 0 and gemini.context_window().tokens == limit


def test_a_server_that_counts_more_than_we_did_gets_a_smaller_prompt_next(stand_in, store):
    """Our count said it fits, the server (same limit) refused: the retry leaves out more turns
    from where the refused fit began, rather than sending the same prompt again."""

    class Undercounting(Recording):
        def count_tokens(self, messages, params):
            return self.inner.count_tokens(messages, params) // 2

    backend = Undercounting(VllmBackend(VllmClient(stand_in)))
    turns = chat(ChatService({"gemma": backend}, store), Conversation("u"), [message(n) for n in range(10)], "gemma")
    assert [t.status for t in turns] == ["cut_off"] * 10, [t.error for t in turns]
    assert len(backend.histories) > 10, "some turns were refused once, then sent smaller"
    # The server said how many tokens it counted: the retry drops a block by that much, so the
    # prompt's beginning moves by several turns at a time, not one per turn.
    starts = [t.context_start for t in turns]
    assert starts[-1] > 0 and all(b - a >= 2 for a, b in itertools.pairwise(starts) if b != a), starts


def test_a_count_that_fails_falls_back_to_the_estimate(tiny_model, store):
    class Uncountable(Recording):
        def count_tokens(self, messages, params):
            raise BackendUnavailable("the tokenizer route is down")

    turns = chat(ChatService({"local": Uncountable(LocalBackend(model=tiny_model))}, store), Conversation("c"),
                 [message(n) for n in range(8)])
    assert [t.status for t in turns] == ["cut_off"] * 8 and turns[-1].context_start > 0


def test_the_next_turn_starts_where_the_last_answered_one_did():
    """A failed turn fitted a context that never reached the model: it neither moves the start
    nor takes the notice."""
    conversation = Conversation("a", turns=[
        Turn(user="a", model="gemma", reply="b", context_start=0),
        Turn(user="c", model="gemma", reply="", status="error", context_start=1),
        Turn(user="d", model="gemini", reply="e", context_start=2),
    ])
    assert ChatService._context_start(conversation.context(), "gemma") == 0
    assert ChatService._context_start(conversation.context(), "gemini") == 2


def test_the_stand_in_counts_with_its_tokenizer_over_http(stand_in, tiny_model):
    backend = VllmBackend(VllmClient(stand_in))
    history = [["Hi", "Hello!"]]
    exact = tiny_model.count_tokens(process_message_openai("And you?", history, "Be brief."))
    assert backend.count_tokens(conversation("And you?", history), GenerationParams(system_prompt="Be brief.")) == exact
    assert backend.context_window().tokens == tiny_model.context_length


def test_without_a_known_context_everything_from_the_start_is_sent(tiny_model):
    class Unknown(Recording):
        def context_window(self):
            return None

    turns = [Turn(user=f"q{n}", model="local", reply=f"a{n}") for n in range(5)]
    fitted = fit_context(Unknown(LocalBackend(model=tiny_model)), turns, "next", PARAMS, start=2)
    assert fitted.messages == conversation("next", [["q2", "a2"], ["q3", "a3"], ["q4", "a4"]])
    assert fitted.params == PARAMS and fitted.not_sent == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    message=st.text(min_size=1, max_size=200),
    history=st.lists(st.tuples(st.text(max_size=80), st.text(max_size=80)), max_size=4),
    persona=st.none() | st.text(max_size=60),
)
def test_the_estimate_is_never_below_the_tokenizers_count(tiny_model, message, history, persona):
    """The estimate lets a chat well inside the context skip the counting call; it must be an
    upper bound, or a prompt it lets through could be refused."""
    pairs = [list(pair) for pair in history]
    exact = tiny_model.count_tokens(process_message_openai(message, pairs, persona))
    assert estimate_tokens(conversation(message, pairs), persona) >= exact
