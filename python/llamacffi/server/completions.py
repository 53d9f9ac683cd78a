"""Running chat and text completions on a model: whole responses, or Server-Sent Events as OpenAI streams them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

from ..jsontypes import JSON, JSONObject
from ..service import LlamaCppTextModel
from ..service.choices import Choices
from ..service.events import Chunk, Finish, TokenLogprob
from ..vocab import TokenArray
from . import shapes, structured
from .errors import from_service
from .metrics import Metrics
from .requests import Parsed

Event = tuple[int, "Chunk | Finish"]


@dataclasses.dataclass
class Job:
    """One completion request on one model: its prompts as tokens and what it has measured."""

    name: str  # the model's served name
    model: LlamaCppTextModel
    parsed: Parsed
    chat: bool
    prompts: list[TokenArray]  # one per prompt
    texts: list[str]  # the prompts as text, for echo
    started: float = dataclasses.field(default_factory=time.perf_counter)
    first: float | None = None
    usage: JSONObject = dataclasses.field(default_factory=dict)
    choices: list[Choices] = dataclasses.field(default_factory=list)

    def start(self) -> None:
        """Queue every prompt's choices; a full queue raises here, before any response starts."""
        p = self.parsed
        try:
            for tokens in self.prompts:
                self.choices.append(self.model.start_choices(tokens, p.options, n=p.n, logprobs=p.logprobs))
        except BaseException:
            for c in self.choices:
                c.cancel()
            raise

    def cancel(self) -> None:
        """Free the slots of choices still running (the client is gone, or the response failed)."""
        for c in self.choices:
            c.cancel()


def prepare(name: str, model: LlamaCppTextModel, parsed: Parsed, chat: bool) -> Job:
    """Template, tokenize and bound a request before anything is queued (errors here are the client's)."""
    opts = parsed.options
    if parsed.grammar is not None:
        opts = dataclasses.replace(opts, grammar=parsed.grammar)
    if chat:
        messages = parsed.messages if parsed.tools is None else structured.with_tools(parsed.messages, parsed.tools)
        texts = [model.format_chat(messages, opts)]
        prompts = [model.tokenize_prompt(texts[0], opts)]
    else:
        prompts = [model.tokenize_prompt(p, opts) for p in parsed.prompts]
        texts = [
            p if isinstance(p, str) else model.llama_model.vocab.detokenize(t) if parsed.echo else ""
            for p, t in zip(parsed.prompts, prompts, strict=False)
        ]
    context = model.config.context_size
    room = min(context - len(p) for p in prompts)  # tokenize_prompt leaves at least one position
    wanted = parsed.max_tokens if parsed.max_tokens is not None else room
    parsed.options = dataclasses.replace(opts, max_tokens=max(1, min(wanted, room)))
    return Job(name, model, parsed, chat, prompts, texts)


async def _events(job: Job) -> AsyncIterator[Event]:
    """Every choice's events; with several prompts, each prompt's ``n`` choices run at once."""
    p = job.parsed
    streams = job.choices
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue[tuple[int, Chunk | Finish | BaseException]] = asyncio.Queue()

    async def pump(k: int, stream: Choices) -> None:
        try:
            async for i, event in stream:
                queue.put_nowait((k * p.n + i, event))
        except BaseException as exc:  # handed to the reader, which raises it
            queue.put_nowait((-1, exc))
            raise

    tasks = [asyncio.ensure_future(pump(k, s)) for k, s in enumerate(streams)]
    try:
        left = len(streams) * p.n
        while left:
            index, event = await queue.get()
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, Finish):
                left -= 1
            yield index, event
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Tally:
    """Counts a job's tokens as its events pass, and feeds the metrics."""

    def __init__(self, job: Job, metrics: Metrics) -> None:
        self.job = job
        self.metrics = metrics
        self.completion = 0
        self.cached = 0
        self.last = 0.0
        self._ttft = metrics.ttft.labels(job.name)
        self._inter_token = metrics.inter_token.labels(job.name)

    def chunk(self) -> None:
        now = time.perf_counter()
        if self.job.first is None:
            self.job.first = now
            self._ttft.observe(now - self.job.started)
        else:
            self._inter_token.observe(now - self.last)
        self.last = now

    def finish(self, index: int, fin: Finish) -> None:
        self.completion += fin.completion_tokens
        if index % self.job.parsed.n == 0:  # the first choice of each prompt says what the prompt reused
            self.cached += fin.cached_tokens

    def close(self) -> JSONObject:
        prompt = sum(len(t) for t in self.job.prompts)
        m, name = self.metrics, self.job.name
        m.prompt_tokens.labels(name).inc(prompt)
        m.cached_tokens.labels(name).inc(self.cached)
        m.generated_tokens.labels(name).inc(self.completion)
        self.job.usage = shapes.usage(prompt, self.cached, self.completion)
        return self.job.usage


def _ids(job: Job) -> tuple[str, int, str]:
    prefix = "chatcmpl-" if job.chat else "cmpl-"
    return prefix + uuid.uuid4().hex, int(time.time()), "chat.completion" if job.chat else "text_completion"


async def respond(job: Job, metrics: Metrics) -> JSONObject:
    """The whole response object."""
    piece = job.model.llama_model.vocab.token_to_piece
    total = len(job.prompts) * job.parsed.n
    texts: list[list[str]] = [[] for _ in range(total)]
    entries: list[list[TokenLogprob]] = [[] for _ in range(total)]
    reasons = ["stop"] * total
    tally = _Tally(job, metrics)
    async for index, event in _events(job):
        if isinstance(event, Chunk):
            tally.chunk()
            texts[index].append(event.text)
            entries[index].extend(event.logprobs)
        else:
            reasons[index] = event.reason
            tally.finish(index, event)
    rid, created, kind = _ids(job)
    choices: list[JSON] = []
    tools = job.parsed.tools
    for i in range(total):
        text = "".join(texts[i])
        if job.chat:
            logprobs = shapes.chat_logprobs(entries[i], piece) if job.parsed.logprobs is not None else None
            message: JSONObject = {"role": "assistant", "content": text, "refusal": None}
            call = structured.as_call(text, tools) if tools is not None else None
            if call is not None:
                message.update(content=None, tool_calls=[call])
                reasons[i] = "tool_calls"
            choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": reasons[i]})
        else:
            echo = job.texts[i // job.parsed.n] if job.parsed.echo else ""
            logprobs = shapes.text_logprobs(entries[i], piece, len(echo)) if job.parsed.logprobs is not None else None
            choices.append({"index": i, "text": echo + text, "logprobs": logprobs, "finish_reason": reasons[i]})
    return {
        "id": rid,
        "object": kind,
        "created": created,
        "model": job.name,
        "system_fingerprint": _fingerprint(),
        "choices": choices,
        "usage": tally.close(),
    }


async def stream(job: Job, metrics: Metrics) -> AsyncIterator[bytes]:
    """The response as Server-Sent Events: a chunk per decoded piece, a last chunk per choice with its
    ``finish_reason``, the usage when asked for, then ``[DONE]``. An error after the start is sent as an event."""
    piece = job.model.llama_model.vocab.token_to_piece
    rid, created, kind = _ids(job)
    kind += ".chunk" if job.chat else ""
    head: JSONObject = {
        "id": rid,
        "object": kind,
        "created": created,
        "model": job.name,
        "system_fingerprint": _fingerprint(),
    }
    if job.parsed.include_usage:
        head["usage"] = None
    p = job.parsed
    tally = _Tally(job, metrics)
    offsets = [0] * (len(job.prompts) * p.n)  # where each choice's next text starts, for text_offset

    held = _Held(len(job.prompts) * p.n, p.tools)
    plain: dict[int, tuple[bytes, bytes]] = {}  # per choice: the bytes around the text of a plain content chunk

    def chunk(
        index: int,
        text: str | None,
        logprobs: tuple[TokenLogprob, ...],
        reason: str | None,
        first: bool = False,
        delta: JSONObject | None = None,
    ) -> bytes:
        lp: JSON = None
        if job.chat:
            if delta is None:
                delta = (
                    {"role": "assistant", "content": text or ""}
                    if first
                    else ({"content": text} if text is not None else {})
                )
            if logprobs and p.logprobs is not None:
                lp = shapes.chat_logprobs(logprobs, piece)
            choice: JSONObject = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}
        else:
            if logprobs and p.logprobs is not None:
                lp = shapes.text_logprobs(list(logprobs), piece, offsets[index])
            choice = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": reason}
            offsets[index] += len(text or "")
        return shapes.sse({**head, "choices": [choice]})

    try:
        for i in range(len(job.prompts) * p.n):
            if job.chat:
                yield chunk(i, None, (), None, first=True)
            elif p.echo and job.texts[i // p.n]:
                yield chunk(i, job.texts[i // p.n], (), None)
        async for index, event in _events(job):
            if isinstance(event, Chunk):
                tally.chunk()
                text = held.feed(index, event.text) if job.chat else event.text
                if text is None:
                    continue
                if p.logprobs is not None:
                    yield chunk(index, text, event.logprobs, None)
                    continue
                around = plain.get(index)
                if around is None:  # the one chunk of this shape, cut where its text goes
                    before, _, after = chunk(index, _MARK, (), None).partition(_MARK_JSON)
                    around = plain[index] = (before, after)
                yield around[0] + shapes.json_string(text) + around[1]
            else:
                tally.finish(index, event)
                reason = event.reason
                if job.chat and held.holding(index):
                    call, rest = held.finish(index)
                    if call is not None:
                        yield chunk(index, None, (), None, delta={"tool_calls": [{"index": 0, **call}]})
                        reason = "tool_calls"
                    elif rest:
                        yield chunk(index, rest, (), None)
                yield chunk(index, None, (), reason)
        used = tally.close()
        if p.include_usage:
            yield shapes.sse({**head, "choices": [], "usage": used})
        yield shapes.DONE
    except Exception as exc:  # the status line is sent: the error goes in the stream
        yield shapes.sse(from_service(exc).body())
        yield shapes.DONE


class _Held:
    """Per choice of a streamed chat with tools: text that may be a tool call is held back until the choice ends
    (all of it when a call is required; from an opening brace when the model may choose)."""

    def __init__(self, n: int, tools: structured.Tools | None) -> None:
        self.tools = tools
        self.parts: list[list[str] | None] = [[] if tools is not None else None for _ in range(n)]
        self.decided = [tools is None] * n

    def feed(self, index: int, text: str) -> str | None:
        """The text to send now, or None while it is held."""
        parts = self.parts[index]
        if parts is None:
            return text
        parts.append(text)
        if self.tools is not None and not self.tools.forced() and not self.decided[index]:
            start = "".join(parts).lstrip()
            if start:
                self.decided[index] = True
                if not start.startswith("{"):  # plain text: send what was held and stop holding
                    self.parts[index] = None
                    return "".join(parts)
        return None

    def holding(self, index: int) -> bool:
        return self.parts[index] is not None

    def finish(self, index: int) -> tuple[JSONObject | None, str]:
        """The choice's tool call, or None and the text held."""
        text = "".join(self.parts[index] or [])
        assert self.tools is not None
        return structured.as_call(text, self.tools), text


_MARK = "\u0000mark\u0000"  # text no model emits, cut out of a rendered chunk to make a template
_MARK_JSON = shapes.json_string(_MARK)


def _fingerprint() -> str:
    from .. import __version__

    return f"llamacffi-{__version__}"
