"""Running chat and text completions on a model: whole responses, or Server-Sent Events as OpenAI streams them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

from ..chat import ThinkingTags
from ..jsontypes import JSON, JSONObject
from ..service import GenerationOptions, LlamaCppTextModel
from ..service.choices import Choices
from ..service.events import Chunk, Finish, TokenLogprob
from ..vocab import TokenArray
from . import calls, reasoning, shapes, structured
from .errors import APIError, from_service, invalid
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
    texts: list[str]  # the prompts as text: echoed, and where the completions' text_offset starts
    started: float = dataclasses.field(default_factory=time.perf_counter)
    first: float | None = None
    usage: JSONObject = dataclasses.field(default_factory=dict)
    choices: list[Choices] = dataclasses.field(default_factory=list)
    reader: calls.Reader | None = None  # how the answers make tool calls, when the request offers tools
    # where the answers hold a reasoning model's thinking: None for none (or kept as content), False for a block at
    # their start, True for one the prompt opened; and the tags around it
    thinking: bool | None = None
    marks: ThinkingTags = reasoning.THINK
    stopped_by: dict[int, str] = dataclasses.field(default_factory=dict)  # the stop sequence that ended a choice

    def failed(self, exc: BaseException) -> APIError:
        """The HTTP form of an error of this request: one of its grammar names the request field it came from."""
        error = from_service(exc)
        if error.param in ("grammar", "response_format") and self.parsed.constraint is not None:
            error.param = self.parsed.constraint
        return error

    def ended(self, index: int, finish: Finish) -> None:
        """Note how a choice ended."""
        if finish.stop_sequence is not None:
            self.stopped_by[index] = finish.stop_sequence

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Queue every prompt's choices, to be read in the running event loop or ``loop``; a full queue raises here,
        before any response starts."""
        p = self.parsed
        try:
            for tokens in self.prompts:
                choices = self.model.start_choices(tokens, p.options, n=p.n, logprobs=p.logprobs, loop=loop)
                self.choices.append(choices)
        except BaseException:
            for c in self.choices:
                c.cancel()
            raise

    def cancel(self) -> None:
        """Free the slots of choices still running (the client is gone, or the response failed)."""
        for c in self.choices:
            c.cancel()


def _constrained(parsed: Parsed) -> GenerationOptions:
    """The request's options with the grammar its output follows."""
    if parsed.grammar is None:
        return parsed.options
    return dataclasses.replace(parsed.options, grammar=parsed.grammar)


def chat_prompt(
    model: LlamaCppTextModel, parsed: Parsed
) -> tuple[str, GenerationOptions, calls.Reader | None, bool | None]:
    """A chat request's prompt text as the model sees it, its options with the grammar its answer follows, how its
    answer makes tool calls, and where its answer holds thinking (:attr:`Job.thinking`)."""
    opts = _constrained(parsed)
    thinking = None
    tools = parsed.tools
    syntax = model.tool_syntax if tools is not None else None
    # a conversation that ends with the assistant's turn asks for its continuation (llama-server's prefill)
    prefill = parsed.messages[-1][1] if parsed.messages[-1][0] == "assistant" else None
    if prefill is not None and "tool_calls" in parsed.chat[-1]:
        raise invalid("an assistant message with tool calls cannot be continued: send the calls' results", "messages")
    cut = -1 if prefill is not None else None
    if tools is not None and syntax is not None:  # the template describes the tools and writes the calls
        grammar = calls.grammar(syntax, tools, parsed.answer_schema, parsed.answer_grammar, parsed.parallel)
        opts = dataclasses.replace(opts, grammar=grammar, preserved_tokens=calls.preserved(syntax))
        described = calls.described(tools)
        text = model.format_chat(parsed.chat[:cut], opts, tools=described, variables=parsed.template_kwargs)
    else:
        messages = parsed.messages[:cut] if tools is None else structured.with_tools(parsed.messages[:cut], tools)
        text = model.format_chat(messages, opts, variables=parsed.template_kwargs)
    text += prefill or ""
    reader = calls.Reader(tools, syntax, parsed.parallel) if tools is not None else None
    marks = model.thinking_tags
    if marks is not None:
        inside = reasoning.opened(text, marks)
        if opts.grammar is None:
            thinking = inside if parsed.reasoning != "none" else None
        elif parsed.reasoning == "none" or parsed.own_grammar:  # the content is the grammar's document alone
            text = reasoning.closed(text, marks) if inside else text
        elif reasoning.shut(text, marks):  # the template turned thinking off: the document comes first
            thinking = None
        else:  # the model thinks, then writes the grammar's document
            thinking = inside
            opts = dataclasses.replace(opts, grammar=reasoning.first(opts.grammar, inside, marks))
        kept = dict.fromkeys((*opts.preserved_tokens, *marks.special))  # the tags' special tokens, written out
        opts = dataclasses.replace(opts, preserved_tokens=tuple(kept))
    return text, opts, reader, thinking


def prepare(name: str, model: LlamaCppTextModel, parsed: Parsed, chat: bool) -> Job:
    """Template, tokenize and bound a request before anything is queued (errors here are the client's)."""
    reader = None
    thinking = None
    if chat:
        text, opts, reader, thinking = chat_prompt(model, parsed)
        texts = [text]
        prompts = [model.tokenize_prompt(text, opts)]
    else:
        opts = _constrained(parsed)
        prompts = [model.tokenize_prompt(p, opts) for p in parsed.prompts]
        texts = [
            p if isinstance(p, str) else model.llama_model.vocab.detokenize(t)
            for p, t in zip(parsed.prompts, prompts, strict=False)
        ]
    context = model.config.context_size
    room = min(context - len(p) for p in prompts)  # tokenize_prompt leaves at least one position
    wanted = parsed.max_tokens if parsed.max_tokens is not None else room
    parsed.options = dataclasses.replace(opts, max_tokens=max(1, min(wanted, room)))
    marks = model.thinking_tags or reasoning.THINK
    return Job(name, model, parsed, chat, prompts, texts, reader=reader, thinking=thinking, marks=marks)


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
    """Times a job's chunks, and counts its tokens into the usage and the metrics once it ends, however it ends."""

    def __init__(self, job: Job, metrics: Metrics) -> None:
        self.job = job
        self.metrics = metrics
        self.last: dict[int, float] = {}  # per choice: when its latest chunk came
        self._ttft = metrics.ttft.labels(job.name)
        self._inter_token = metrics.inter_token.labels(job.name)

    def chunk(self, index: int) -> None:
        now = time.perf_counter()
        if self.job.first is None:
            self.job.first = now
            self._ttft.observe(now - self.job.started)
        if index in self.last:
            self._inter_token.observe(now - self.last[index])
        self.last[index] = now

    def close(self) -> JSONObject:
        """The usage; the metrics count it the first time (a response that ends early counts what it spent)."""
        if not self.job.usage:
            counts = [c.tokens() for c in self.job.choices]
            prompt, cached, completion = (
                sum(map(len, self.job.prompts)),
                sum(c[0] for c in counts),
                sum(c[1] for c in counts),
            )
            m, name = self.metrics, self.job.name
            m.prompt_tokens.labels(name).inc(prompt)
            m.cached_tokens.labels(name).inc(cached)
            m.generated_tokens.labels(name).inc(completion)
            self.job.usage = shapes.usage(prompt, cached, completion)
        return self.job.usage


def _piece(job: Job) -> Callable[[int], bytes]:
    """A token's text in the log-probabilities: the special tokens the output writes out are written there too
    (looked up only for a request that asks for log-probabilities)."""
    vocab = job.model.llama_model.vocab
    kept = job.parsed.options.preserved_tokens if job.parsed.logprobs is not None else ()
    ids = {t for t in map(vocab.special_token, kept) if t is not None}
    return (lambda token: vocab.token_to_piece(token, special=token in ids)) if ids else vocab.token_to_piece


def _ids(job: Job) -> tuple[str, int, str]:
    prefix = "chatcmpl-" if job.chat else "cmpl-"
    return prefix + uuid.uuid4().hex, int(time.time()), "chat.completion" if job.chat else "text_completion"


async def respond(job: Job, metrics: Metrics) -> JSONObject:
    """The whole response object."""
    piece = _piece(job)
    total = len(job.prompts) * job.parsed.n
    texts: list[list[str]] = [[] for _ in range(total)]
    entries: list[list[TokenLogprob]] = [[] for _ in range(total)]
    reasons = ["stop"] * total
    tally = _Tally(job, metrics)
    try:
        async for index, event in _events(job):
            if isinstance(event, Chunk):
                tally.chunk(index)
                texts[index].append(event.text)
                entries[index].extend(event.logprobs)
            else:
                reasons[index] = event.reason
                job.ended(index, event)
    finally:
        usage = tally.close()
    rid, created, kind = _ids(job)
    choices: list[JSON] = []
    for i in range(total):
        text = "".join(texts[i])
        if job.chat:
            logprobs = shapes.chat_logprobs(entries[i], piece) if job.parsed.logprobs is not None else None
            cut = reasons[i] == "length"
            thought, text = (None, text) if job.thinking is None else reasoning.split(text, job.thinking, job.marks)
            content, made = job.reader.read(text, cut) if job.reader is not None else (text, [])
            message: JSONObject = {"role": "assistant", "content": content, "refusal": None}
            if thought:  # none, or an empty block: no reasoning_content, as a stream sends none
                message["reasoning_content"] = thought
            if made:  # an answer cut short keeps its whole calls, and says it was cut
                message["tool_calls"] = list(made)
                reasons[i] = "length" if cut else "tool_calls"
            choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": reasons[i]})
        else:
            prompt = job.texts[i // job.parsed.n]
            echo = prompt if job.parsed.echo else ""
            logprobs = shapes.text_logprobs(entries[i], piece, len(prompt)) if job.parsed.logprobs is not None else None
            choices.append({"index": i, "text": echo + text, "logprobs": logprobs, "finish_reason": reasons[i]})
    return {
        "id": rid,
        "object": kind,
        "created": created,
        "model": job.name,
        "system_fingerprint": _fingerprint(),
        "choices": choices,
        "usage": usage,
    }


async def stream(job: Job, metrics: Metrics) -> AsyncIterator[bytes]:
    """The response as Server-Sent Events: a chunk per decoded piece, a last chunk per choice with its
    ``finish_reason``, the usage when asked for, then ``[DONE]``. An error after the start is sent as an event."""
    piece = _piece(job)
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
    # where each choice's next text starts in prompt + completion, for text_offset (an echo is sent as text first)
    offsets = [0 if p.echo else len(job.texts[i // p.n]) for i in range(len(job.prompts) * p.n)]

    held = _Held(len(job.prompts) * p.n, job.reader)
    plain: dict[int, tuple[bytes, bytes]] = {}  # per choice: the bytes around the text of a plain content chunk
    # choices whose first delta (the one with the role) is not sent yet: with tools it waits until the answer shows
    # whether it is text or a call, so that a call's message has content null, as a whole response's has
    unopened = set(range(len(job.prompts) * p.n)) if job.chat else set()

    thinking = _Thinking(len(job.prompts) * p.n, job.thinking, job.marks) if job.thinking is not None else None
    thought_only: set[int] = set()  # choices whose message thinking opened, and no content has followed yet

    def chunk(
        index: int,
        text: str | None,
        logprobs: tuple[TokenLogprob, ...],
        reason: str | None,
        delta: JSONObject | None = None,
    ) -> bytes:
        lp: JSON = None
        if job.chat:
            if delta is None:
                delta = {"content": text} if text is not None else {}
            if index in unopened:
                unopened.discard(index)
                # thinking opens the message without content: a call may follow, whose message has none
                opening: JSONObject = (
                    {"role": "assistant"} if "reasoning_content" in delta else {"role": "assistant", "content": ""}
                )
                delta = {**opening, **delta}
                if "content" not in delta:
                    thought_only.add(index)
            if "content" in delta:
                thought_only.discard(index)
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
            if job.chat and job.reader is None:
                yield chunk(i, "", (), None)
            elif not job.chat and p.echo and job.texts[i // p.n]:
                yield chunk(i, job.texts[i // p.n], (), None)

        def answer(index: int, event: Chunk) -> Iterator[bytes]:
            text, logprobs = held.feed(index, event) if job.chat else (event.text, event.logprobs)
            if text is None:
                return
            if p.logprobs is not None or index in unopened:
                yield chunk(index, text, logprobs, None)
                return
            around = plain.get(index)
            if around is None:  # the one chunk of this shape, cut where its text goes
                before, _, after = chunk(index, _MARK, (), None).partition(_MARK_JSON)
                around = plain[index] = (before, after)
            yield around[0] + shapes.json_string(text) + around[1]

        async for index, event in _events(job):
            if isinstance(event, Chunk):
                tally.chunk(index)
                said: Chunk | None = event
                if thinking is not None:
                    thought, said = thinking.feed(index, event)
                    if thought is not None:
                        yield chunk(index, None, thought.logprobs, None, {"reasoning_content": thought.text})
                for out in answer(index, said) if said is not None else ():
                    yield out
            else:
                if thinking is not None:
                    thought, said = thinking.finish(index)
                    if thought is not None:
                        yield chunk(index, None, thought.logprobs, None, {"reasoning_content": thought.text})
                    for out in answer(index, said) if said is not None else ():
                        yield out
                reason = event.reason
                job.ended(index, event)
                made: list[JSONObject] = []
                if job.chat and held.holding(index):
                    rest, made, logprobs = held.finish(index, reason == "length")
                    if made:
                        delta: JSONObject = {"tool_calls": [{"index": k, **c} for k, c in enumerate(made)]}
                        if rest is not None or index in unopened:
                            delta = {"content": rest, **delta}
                        yield chunk(index, None, logprobs, None, delta)
                        if reason != "length":
                            reason = "tool_calls"
                    elif rest:
                        yield chunk(index, rest, logprobs, None)
                if index in thought_only and not made:  # an answer of thinking alone: its content is empty
                    yield chunk(index, "", (), None)
                yield chunk(index, None, (), reason)
        used = tally.close()
        if p.include_usage:
            yield shapes.sse({**head, "choices": [], "usage": used})
        yield shapes.DONE
    except Exception as exc:  # the status line is sent: the error goes in the stream
        yield b"data: " + job.failed(exc).json() + b"\n\n"
        yield shapes.DONE
    finally:  # also when the client leaves: what was spent is counted
        tally.close()


class _Held:
    """Per choice of a streamed chat with tools: text that may be a tool call is held back until the choice ends
    (all of it when a call is required; from where a call may start when the model may choose)."""

    def __init__(self, n: int, reader: calls.Reader | None) -> None:
        self.reader = reader
        self.parts: list[list[str] | None] = [[] if reader is not None else None for _ in range(n)]
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]

    def feed(self, index: int, chunk: Chunk) -> tuple[str | None, tuple[TokenLogprob, ...]]:
        """The text to send now and its tokens' log-probabilities, or None while it is held."""
        parts = self.parts[index]
        if parts is None or self.reader is None:
            return chunk.text, chunk.logprobs
        parts.append(chunk.text)
        self.logprobs[index].extend(chunk.logprobs)
        text = "".join(parts)
        cut = self.reader.held_from(text)
        if cut == 0:
            parts[:] = [text]
            return None, ()
        self.parts[index] = None if cut is None else [text[cut:]]
        return text[:cut], self._take(index)

    def holding(self, index: int) -> bool:
        return self.parts[index] is not None

    def finish(self, index: int, cut: bool = False) -> tuple[str | None, list[JSONObject], tuple[TokenLogprob, ...]]:
        """The text held that is not a call (None when there is none beside calls), the calls, and the held tokens'
        log-probabilities; ``cut``: the answer ended at its length limit (:meth:`.calls.Reader.read`)."""
        text = "".join(self.parts[index] or [])
        assert self.reader is not None
        content, made = self.reader.read(text, cut)
        return content, made, self._take(index)

    def _take(self, index: int) -> tuple[TokenLogprob, ...]:
        taken, self.logprobs[index] = tuple(self.logprobs[index]), []
        return taken


class _Thinking:
    """Per choice of a streamed chat from a reasoning model: its thinking told apart from its answer as it comes
    (:class:`.reasoning.Splitter`), each with the log-probabilities of the tokens that made it."""

    def __init__(self, n: int, inside: bool, marks: ThinkingTags) -> None:
        self.splitters = [reasoning.Splitter(inside, marks) for _ in range(n)]
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]

    def feed(self, index: int, chunk: Chunk) -> tuple[Chunk | None, Chunk | None]:
        """The thinking and the answer this chunk completes (None for none)."""
        thought, said = self.splitters[index].feed(chunk.text)
        return self._out(index, chunk.logprobs, thought, said)

    def finish(self, index: int) -> tuple[Chunk | None, Chunk | None]:
        """The thinking or answer still held when the choice ends."""
        thought, said = self.splitters[index].finish()
        return self._out(index, (), thought, said)

    def _out(
        self, index: int, logprobs: tuple[TokenLogprob, ...], thought: str, said: str
    ) -> tuple[Chunk | None, Chunk | None]:
        held = self.logprobs[index]
        held.extend(logprobs)
        if not thought and not said:
            return None, None
        taken = tuple(held)
        held.clear()
        if thought and said:
            return Chunk(thought, taken), Chunk(said)
        return (Chunk(thought, taken), None) if thought else (None, Chunk(said, taken))


_MARK = "\u0000mark\u0000"  # text no model emits, cut out of a rendered chunk to make a template
_MARK_JSON = shapes.json_string(_MARK)


def _fingerprint() -> str:
    from .. import __version__

    return f"llamacffi-{__version__}"
