"""The scheduler: one thread owns the Context and decodes every active request together.

Each of ``parallel`` slots is a sequence of the KV memory and remembers the tokens it holds. A new request takes a
free slot next to the busy ones (preferring the one that shares the longest prefix with its prompt; a longer prefix
held by another free slot is copied over), keeps that prefix and drops the rest (``llama_memory_seq_rm``; a full
clear where the memory cannot drop a part). Every step decodes one token of each
generating request and prompt tokens of new ones in a single ``llama_decode`` call; requests join between steps
and leave when they finish or are cancelled.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .. import (
    Batch,
    Context,
    DecodeAbortedError,
    GrammarError,
    LlamaError,
    NothingToSampleError,
    StateError,
    backend,
    limits,
)
from .. import Model as LlamaModel
from . import runner
from .config import ModelConfig
from .errors import GenerationError, InvalidConfigError, ModelClosedError, QueueFullError
from .prompt_cache import PromptCache, common_prefix
from .request import END, Request, Sink, send, token_logprob
from .request import emit as _emit

__all__ = ["END", "Engine", "Request", "Scheduler", "Sink"]

COPY_MIN_TOKENS = 32  # a cached prefix at least this much longer is copied to the chosen slot rather than decoded
# Query tokens of one sequence from which ggml's CPU flash attention switches to its tiled kernel (GGML_FA_TILE_Q),
# which rounds differently from the one-token kernel.
FA_TILE = 64


class Scheduler(Protocol):
    """What a text model asks of its scheduler: an :class:`Engine` in this process, or a
    :class:`~.worker.WorkerEngine` whose model runs in a worker process."""

    stats: dict[str, int]

    def submit(self, request: Request) -> None: ...

    def cancel(self, request: Request) -> None: ...

    def load(self) -> tuple[int, int]: ...

    def begin_close(self) -> None: ...  # start closing, without waiting (see service.loaded.close_all)

    def close(self) -> None: ...


class _Slot:
    __slots__ = ("seq_id", "cached", "n_cached", "request", "pending", "next_token", "logit_index", "used")

    def __init__(self, seq_id: int, capacity: int) -> None:
        self.seq_id = seq_id
        self.cached = np.empty(capacity, dtype=np.int32)  # tokens in this sequence's memory, positions 0..n-1
        self.n_cached = 0
        self.request: Request | None = None
        self.pending: npt.NDArray[np.int32] = self.cached[:0]
        self.next_token = -1
        self.logit_index = -1
        self.used = 0  # when a request last took this slot (the engine's admission count)


class Engine(runner.Attached):
    """Runs the requests of one model on one Context, stepped by the process's engine thread
    (:mod:`llamacffi.service.runner`)."""

    def __init__(self, model: LlamaModel, config: ModelConfig, threads: int | None) -> None:
        super().__init__("the model is closed")
        self.model = model
        self.config = config
        self.n_ctx_seq = config.context_size
        self.ctx = Context(
            model,
            n_ctx=config.context_size * config.parallel,
            n_batch=config.batch_size,
            n_seq_max=config.parallel,
            n_threads=threads,
            kv_unified=False,
            flash_attn=config.flash_attn,
        )
        self._vocab = model.vocab
        # A short prompt's last token may share the prompt's step where the kernels are known: flash attention on
        # ggml's CPU backend. Elsewhere it always gets a step of its own.
        self._short_prompts_whole = config.flash_attn is not False and not any(
            d["type"] in ("gpu", "igpu") for d in backend.devices()
        )
        self._slots = [_Slot(i, config.context_size) for i in range(config.parallel)]
        self._saved = PromptCache(config.prompt_cache_mib << 20) if config.prompt_cache_mib else None
        # Slots whose memory a copy waits to read: llama.cpp copies between KV streams at the next decode, so until
        # then nothing may be restored into them.
        self._copy_sources: set[int] = set()
        self._placing = 0  # a request between the queue and its slot (admission lets go of the lock while copying)
        self._batch = Batch(config.batch_size, n_seq_max=config.parallel)
        self._queue: deque[Request] = deque()
        self._tick = 0
        self._last_submit = 0.0  # time.monotonic() of the latest submission
        self._queued_since = 0.0  # ... of the first submission that found the queue empty
        self._step_seconds = 0.0  # a moving average of decode steps (0: none yet)
        self.stats = {
            "requests": 0,
            "prompt_tokens_reused": 0,
            "prompt_tokens_decoded": 0,
            "generated_tokens": 0,
            "decode_calls": 0,
            "max_batched_sequences": 0,
            "prompt_copies": 0,
            "prompt_cache_saves": 0,
            "prompt_cache_restores": 0,
        }
        self._runner.attach(self)

    # ---- called from any thread -------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        with self._cond:
            if self.closed:
                raise ModelClosedError(self._closed_why)
            busy = self._busy()
            if len(self._queue) + busy >= self.config.parallel + self.config.max_queue:
                raise QueueFullError(
                    f"{busy} of {self.config.parallel} slots are busy and {len(self._queue)} requests are waiting "
                    f"(max_queue={self.config.max_queue}); retry later"
                )
            now = time.monotonic()
            if not self._queue:
                self._queued_since = now
            self._last_submit = now
            self._queue.append(request)
            self.stats["requests"] += 1
            self._runner.wake()

    def cancel(self, request: Request) -> None:
        with self._cond:
            if request.finished:  # generate() cancels on its way out: nothing to stop, no one to wake
                return
            request.cancelled = True
            try:
                self._queue.remove(request)  # still waiting: it no longer counts against max_queue
            except ValueError:
                pass
            self._runner.wake()

    def load(self) -> tuple[int, int]:
        """``(busy slots, waiting requests)``."""
        with self._cond:
            return self._busy(), len(self._queue)

    def _busy(self) -> int:
        """Slots whose request runs on (a cancelled one leaves its slot at the next step), and one being placed."""
        return self._placing + sum(1 for s in self._slots if s.request is not None and not s.request.cancelled)

    def begin_close(self) -> None:
        """Nothing to start: an engine in this process closes without a wait to share."""

    def close(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._runner.wake()
        self._runner.detach(self)  # the engine thread lets go of the context before it is freed
        self.ctx.close()
        if self._saved is not None:
            self._saved.clear()

    def _forget(self) -> None:
        self._queue.clear()
        for s in self._slots:
            s.request = None

    # ---- on the engine thread -----------------------------------------------------------------------------------

    def has_work(self) -> bool:
        """Whether a step would do anything (called with the lock held)."""
        return bool(self._queue) or any(s.request is not None for s in self._slots)

    def step(self, alone: bool) -> None:
        """Admit waiting requests and decode one step of every active one. When this engine is the only one with
        work (``alone``), it goes on decoding until a request ends, its consumer goes away, or a submission,
        cancellation or close happens anywhere in the process: the thread's loop stays out of the way of tokens."""
        try:
            with self._cond:
                for slot in self._slots:
                    if slot.request is not None and slot.request.cancelled:
                        self._release(slot)  # its consumer is gone: nothing more is sent
                self._gather()
                if self.closed:
                    return
                refused = self._admit()
                changes = self._runner.changes  # under the lock: a submission after the admission changes it
            for r, exc in refused:
                _emit(r, GenerationError(f"the request could not be placed: {exc!r}"))
            active = [s for s in self._slots if s.request is not None]
            while active:
                self._decode(active)
                if (
                    not alone
                    or self._runner.changes != changes
                    or any(s.request is None or s.request.cancelled for s in active)
                ):  # ended, or its consumer gone
                    break
        except Exception as exc:  # never leave requests waiting on a failed step
            with self._cond:
                failed = [s.request for s in self._slots if s.request is not None]
                for s in self._slots:
                    if s.request is not None:
                        self.ctx.memory.seq_rm(s.seq_id, -1, -1)
                        s.n_cached = 0
                        self._release(s)
            for r in failed:
                _emit(r, GenerationError(f"generation failed: {exc!r}"))

    def fail_waiting(self, error: BaseException | None = None) -> None:
        """After :meth:`close`: every request still queued or running ends with :class:`ModelClosedError`. After a
        step that failed with ``error``: with a :class:`GenerationError`, and the slots start empty."""
        with self._cond:
            waiting = list(self._queue) + [s.request for s in self._slots if s.request is not None]
            self._queue.clear()
            for s in self._slots:
                if error is not None:
                    self._release(s)
                    self._empty(s)
                s.request = None
        for r in waiting:
            _emit(r, ModelClosedError("the model was closed before the request finished") if error is None
                  else GenerationError(f"generation failed: {error!r}"))  # fmt: skip

    def _gather(self) -> None:
        """Hold the admission of a burst until it stops arriving (a batch window without a submission, at most
        ``BATCH_WINDOW_HOLDS`` windows after its first), so that its prompts share a step instead of each waiting
        behind the step of the one before. A window is at most a fifth of a recent step, so that a lone request
        never waits long beside what a step costs (on a GPU, a fraction of a millisecond). Waits on the lock, which
        submissions take."""
        window = self.config.batch_window
        if self._step_seconds:
            window = min(window, self._step_seconds / 5)
        if window <= 0:
            return
        deadline = self._queued_since + limits.BATCH_WINDOW_HOLDS * window
        while self._queue and not self.closed:
            free = sum(1 for s in self._slots if s.request is None)
            wait = min(self._last_submit + window, deadline) - time.monotonic()
            if wait <= 0 or len(self._queue) >= free:
                return
            self._cond.wait(wait)

    def _admit(self) -> list[tuple[Request, Exception]]:
        """Waiting requests take free slots in order; one whose sibling's prompt is not in memory yet waits.
        Returns the requests that failed to be placed, with why (the free slots then start empty)."""
        free = [s for s in self._slots if s.request is None]
        held: list[Request] = []
        refused: list[tuple[Request, Exception]] = []
        while self._queue and free:
            req = self._queue.popleft()
            if req.cancelled:
                continue
            lead = req.after
            if lead is not None and not (lead.prompt_done or lead.finished or lead.cancelled):
                held.append(req)
                continue
            self._placing = 1  # out of the queue and in no slot yet: it still counts against the limit
            try:
                best, keep = self._place(req, free)
            except Exception as exc:  # what the free slots hold is unknown now: they start empty
                refused.append((req, exc))
                for s in free:
                    self._empty(s)
                continue
            finally:
                self._placing = 0
            free.remove(best)
            best.pending = req.prompt[keep:]
            best.request = req
            best.next_token = -1
            req.n_reused = keep
            req.prompt_done = len(best.pending) <= 1
            self.stats["prompt_tokens_reused"] += keep
            self.stats["prompt_tokens_decoded"] += len(best.pending)
        self._queue.extendleft(reversed(held))
        return refused

    def _empty(self, slot: _Slot) -> None:
        """Forget what a slot's memory holds, and drop it where the memory can."""
        slot.n_cached = 0
        with contextlib.suppress(LlamaError):
            self.ctx.memory.seq_rm(slot.seq_id, -1, -1)

    def _place(self, req: Request, free: list[_Slot]) -> tuple[_Slot, int]:
        """Choose the slot for a new request and trim its memory to what the prompt shares; returns the slot and
        how many of its tokens stay.

        llama.cpp decodes the whole range of KV streams between the lowest and the highest sequence in a batch, so
        the slot that widens the range of the busy ones least wins (an empty stream inside the range costs about as
        much as a token). When another free slot shares a longer prefix, its memory is copied over first (a
        whole-stream copy, far cheaper than decoding the prefix again); so is a sibling's (``req.after``), busy or
        not, whatever the length of the prompt they share. A prompt saved in host memory that shares more than any
        slot is restored into the chosen one. What the chosen slot held and loses is saved there first."""
        prompt = req.prompt
        last = len(prompt) - 1  # decode at least the last prompt token: it starts output
        busy = [s.seq_id for s in self._slots if s.request is not None]
        lead = [s for s in self._slots if s.request is not None and s.request is req.after]
        lcps = {s.seq_id: common_prefix(s.cached[: s.n_cached], prompt) for s in free + lead}

        def worth(s: _Slot) -> int:
            # A few shared tokens (BOS, a template's header) do not justify evicting a long cached prompt: such a
            # slot ranks as sharing nothing, and the least recently used one goes first. A slot that holds the whole
            # prompt always counts.
            n = lcps[s.seq_id]
            return n if n >= COPY_MIN_TOKENS or 2 * n >= s.n_cached or n >= last else 0

        if busy:
            lo, hi = min(busy), max(busy)
            target = min(free, key=lambda s: (max(hi, s.seq_id) - min(lo, s.seq_id), -worth(s), s.used, s.seq_id))
        else:
            target = min(free, key=lambda s: (-worth(s), s.used, s.seq_id))
        self._tick += 1
        target.used = self._tick
        mem = self.ctx.memory
        donor = max(free + lead, key=lambda s: (lcps[s.seq_id], s in lead, -s.seq_id))
        copy = lcps[donor.seq_id] >= lcps[target.seq_id] + (1 if donor in lead else COPY_MIN_TOKENS)
        have = min(lcps[donor.seq_id] if copy else lcps[target.seq_id], last)
        saved, n_saved = None, 0
        restorable = target.seq_id not in self._copy_sources
        if restorable and self._saved is not None and have + limits.PROMPT_CACHE_MIN_TOKENS <= last:
            saved, n_saved = self._saved.match(prompt)
            if min(n_saved, last) < have + limits.PROMPT_CACHE_MIN_TOKENS:
                saved = None
        self._save(target, min(lcps[target.seq_id], last))
        if saved is not None:
            try:
                with self._unlocked():
                    self.ctx.seq_state_load(saved.state, target.seq_id)
            except StateError:  # not expected from a state this context saved; decode the prompt instead
                mem.seq_rm(target.seq_id, -1, -1)
                target.n_cached = lcps[target.seq_id] = 0
            else:
                target.cached[: len(saved.tokens)] = saved.tokens
                target.n_cached = len(saved.tokens)
                lcps[target.seq_id] = n_saved
                self.stats["prompt_cache_restores"] += 1
        elif copy:
            mem.seq_rm(target.seq_id, -1, -1)
            mem.seq_cp(donor.seq_id, target.seq_id, -1, -1)
            self._copy_sources.add(donor.seq_id)
            target.cached[: donor.n_cached] = donor.cached[: donor.n_cached]
            target.n_cached = donor.n_cached
            lcps[target.seq_id] = lcps[donor.seq_id]
            self.stats["prompt_copies"] += 1
        keep = min(lcps[target.seq_id], last)
        if keep < target.n_cached and not mem.seq_rm(target.seq_id, keep, -1):
            mem.seq_rm(target.seq_id, -1, -1)
            keep = 0
        target.n_cached = keep
        return target, keep

    def _save(self, slot: _Slot, keep: int) -> None:
        """Save what ``slot`` holds to host memory before all but its first ``keep`` tokens go, unless that is too
        little to matter or already saved."""
        cache = self._saved
        if cache is None or slot.n_cached - keep < limits.PROMPT_CACHE_MIN_TOKENS:
            return
        tokens = slot.cached[: slot.n_cached]
        if cache.holds(tokens):
            return
        try:
            with self._unlocked():
                state = self.ctx.seq_state_bytearray(slot.seq_id)
        except StateError:
            return
        if cache.put(tokens, state):
            self.stats["prompt_cache_saves"] += 1

    @contextlib.contextmanager
    def _unlocked(self) -> Iterator[None]:
        """The lock let go while this thread copies a sequence's memory (up to gigabytes): other threads, and the
        event loop of a server, only queue, cancel and count meanwhile, which admission allows for. The slots and the
        context stay this thread's."""
        self._cond.release()
        try:
            yield
        finally:
            self._cond.acquire()

    def _release(self, slot: _Slot) -> None:
        if slot.request is not None:
            slot.request.finished = True
            if slot.request.sampler is not None:
                slot.request.sampler.close()  # its grammar, if any
        slot.request = None
        slot.pending = slot.cached[:0]
        slot.next_token = -1

    def _decode(self, active: list[_Slot]) -> None:
        one = active[0] if len(active) == 1 and active[0].next_token >= 0 else None
        if one is not None:  # one sequence generating: Context's one-token fast path, no batch to build
            one.logit_index = 0
            added = [(one, 1)]
        else:
            added = self._fill_batch(active)
        started = time.perf_counter()
        try:
            if one is not None:
                self.ctx.decode_token(one.next_token, one.n_cached, one.seq_id)
            else:
                self.ctx.decode(self._batch)
        except (DecodeAbortedError, KeyboardInterrupt):
            for slot, _ in added:  # a Ctrl-C in the main thread: undo this step, keep going
                self.ctx.memory.seq_rm(slot.seq_id, slot.n_cached, -1)
            return
        except LlamaError as exc:
            failed = [slot.request for slot, _ in added if slot.request is not None]
            with self._cond:  # freed before the callers hear of it: they may submit again at once
                for slot, _ in added:
                    self.ctx.memory.seq_rm(slot.seq_id, slot.n_cached, -1)
                    self._release(slot)
            for r in failed:
                _emit(r, GenerationError(str(exc)))
            return
        self._copy_sources.clear()  # the copies queued at admission are done
        took = time.perf_counter() - started
        self._step_seconds = took if not self._step_seconds else 0.8 * self._step_seconds + 0.2 * took
        stats = self.stats
        stats["decode_calls"] += 1
        if len(added) > stats["max_batched_sequences"]:
            stats["max_batched_sequences"] = len(added)
        for slot, n in added:
            if slot.next_token >= 0:
                slot.cached[slot.n_cached] = slot.next_token
                slot.next_token = -1
            else:
                slot.cached[slot.n_cached : slot.n_cached + n] = slot.pending[:n]
                slot.pending = slot.pending[n:]
                if len(slot.pending) <= 1 and slot.request is not None:
                    slot.request.prompt_done = True  # a sibling may copy it now
            slot.n_cached += n
        for slot, _ in added:
            if slot.logit_index >= 0 and slot.request is not None:
                self._sample(slot, slot.request)

    def _fill_batch(self, active: list[_Slot]) -> list[tuple[_Slot, int]]:
        """One token of each generating sequence, then as many prompt tokens as fit; returns (slot, tokens)."""
        batch = self._batch
        batch.clear()
        budget = batch.capacity
        added: list[tuple[_Slot, int]] = []
        for slot in active:
            slot.logit_index = -1
            if slot.next_token >= 0 and budget > 0:
                slot.logit_index = batch.add(slot.next_token, slot.n_cached, slot.seq_id, logits=True)
                added.append((slot, 1))
                budget -= 1
        for slot in active:
            if slot.next_token < 0 and len(slot.pending) and budget > 0:
                # Where output starts, the logits must not depend on whether the prompt was decoded or reused (then
                # its last token is decoded alone). They do not while the last token is decoded among fewer than
                # FA_TILE of its sequence's tokens; a longer rest of a prompt leaves its last token a step of its own.
                rest = len(slot.pending)
                alone = rest > 1 and (rest >= FA_TILE or not self._short_prompts_whole)
                take = min(rest - 1 if alone else rest, budget)
                idx = batch.add_sequence(
                    slot.pending[:take], slot.n_cached, slot.seq_id, logits_last=take == len(slot.pending)
                )
                if take == len(slot.pending):
                    slot.logit_index = idx
                added.append((slot, take))
                budget -= take
        return added

    def _sample(self, slot: _Slot, req: Request) -> None:
        logits = self.ctx.logits(slot.logit_index)
        if req.greedy:
            token = int(logits.argmax())
        else:
            assert req.sampler is not None
            hist = req.history[: req.n_history] if req.history is not None else None
            try:
                token = req.sampler.sample(logits, hist)
            except LlamaError as exc:  # no token can be sampled (a grammar the vocabulary cannot spell): this request
                with self._cond:  # ends, the others in the step go on
                    self._release(slot)
                _emit(req, _sampling_error(exc, req.options.constraint_field))
                return
        if self._vocab.is_eog(token):
            req.finish_reason = "stop"
            self._finish(slot, req)
            return
        req.n_generated += 1
        self.stats["generated_tokens"] += 1
        if req.history is not None:
            req.history[req.n_history] = token
            req.n_history += 1
        if req.logprobs is not None:
            req.entries.append(token_logprob(logits, token, req.logprobs))
        send(req, req.stops.feed(req.decoder.feed(token)))
        if req.stops.stopped:
            req.finish_reason = "stop"
        elif req.n_generated >= req.options.max_tokens or slot.n_cached + 1 >= self.n_ctx_seq:
            req.finish_reason = "length"
        else:
            slot.next_token = token
            return
        self._finish(slot, req)

    def _finish(self, slot: _Slot, req: Request) -> None:
        tail = req.stops.feed(req.decoder.flush())
        tail += req.stops.flush()
        send(req, tail)
        with self._cond:
            self._release(slot)  # before END: a caller that submits again at once finds the slot free
        _emit(req, END)


def _sampling_error(exc: LlamaError, constraint: str | None) -> Exception:
    """What a request whose sampling failed ends with: the fault of its grammar (``constraint``, the option that
    gave it), which is too ambiguous to run or allows no token of the vocabulary, or else a generation error."""
    if constraint is not None and isinstance(exc, GrammarError):
        return InvalidConfigError(str(exc), field=constraint)
    if constraint is not None and isinstance(exc, NothingToSampleError):  # every token banned: by the grammar
        return InvalidConfigError(f"the grammar allows no token of the vocabulary here ({exc})", field=constraint)
    return GenerationError(f"sampling failed: {exc}")
