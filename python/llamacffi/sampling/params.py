"""Sampling parameters, checked once for both samplers, and the checks of a logits row."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgumentError, InvalidTokenError, NothingToSampleError
from ..limits import BIAS_MAX, INT32_MAX, PENALTY_MAX, SEED_MAX, TEMPERATURE_MAX
from ..validate import as_int, as_real

if TYPE_CHECKING:  # constraint imports this module
    from .constraint import VocabLike

FloatArray = npt.NDArray[np.floating]
IdArray = npt.NDArray[np.intp]
HistoryLike = Sequence[int] | npt.NDArray[np.integer]


def as_logits(logits: object) -> FloatArray:
    """Return ``logits`` as a 1-D float ndarray without copying, or raise InvalidArgumentError."""
    row = logits if type(logits) is np.ndarray else np.asarray(logits)
    if row.dtype.kind != "f":
        raise InvalidArgumentError(f"logits must be a float array, got dtype {row.dtype}")
    if row.ndim != 1:
        raise InvalidArgumentError(f"logits must be 1-D (one row of n_vocab scores), got shape {row.shape}")
    if row.size == 0:
        raise InvalidArgumentError("logits is empty")
    return row


def nan_error() -> InvalidArgumentError:
    return InvalidArgumentError("logits contain NaN")


def banned_error() -> NothingToSampleError:
    return NothingToSampleError("every candidate token has logit -inf (all banned); nothing can be sampled")


def bad_token(token: int, n_vocab: int, what: str) -> InvalidTokenError:
    return InvalidTokenError(
        f"{what} token id {token} is out of range for a vocabulary of {n_vocab} tokens (valid ids are 0..{n_vocab - 1})"
    )


def check_seed(seed: object) -> int | None:
    """A seed in ``[0, 2**32 - 1]``, or None."""
    return None if seed is None else as_int("seed", seed, 0, SEED_MAX)


def penalties_on(repeat_penalty: float, frequency_penalty: float, presence_penalty: float, penalty_last_n: int) -> bool:
    """Whether these penalty settings change any logit."""
    return penalty_last_n != 0 and (repeat_penalty != 1.0 or frequency_penalty != 0.0 or presence_penalty != 0.0)


class Params:
    """Validated sampling parameters shared by both samplers."""

    __slots__ = (
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "repeat_penalty",
        "frequency_penalty",
        "presence_penalty",
        "penalty_last_n",
        "bias_ids",
        "bias_vals",
        "seed",
    )

    def __init__(
        self,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        repeat_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
        penalty_last_n: int,
        logit_bias: Mapping[int, float] | None,
        seed: int | None,
    ) -> None:
        self.temperature = as_real("temperature", temperature, 0.0, TEMPERATURE_MAX)  # 0: greedy
        self.top_k = as_int("top_k", top_k, 0)  # 0: off
        self.top_p = as_real("top_p", top_p, 0.0, 1.0, lo_open=True)  # 1: off
        self.min_p = as_real("min_p", min_p, 0.0, 1.0)  # 0: off
        self.repeat_penalty = as_real("repeat_penalty", repeat_penalty, 0.0, PENALTY_MAX, lo_open=True)  # 1: off
        self.frequency_penalty = as_real("frequency_penalty", frequency_penalty, -PENALTY_MAX, PENALTY_MAX)
        self.presence_penalty = as_real("presence_penalty", presence_penalty, -PENALTY_MAX, PENALTY_MAX)
        self.penalty_last_n = as_int("penalty_last_n", penalty_last_n, -1)  # -1: whole history, 0: off
        self.seed = check_seed(seed)
        self.bias_ids: IdArray | None = None
        self.bias_vals: npt.NDArray[np.float32] | None = None
        if logit_bias:
            self._set_bias(logit_bias)

    def _set_bias(self, logit_bias: Mapping[int, float]) -> None:
        items: dict[int, float] = {}
        for key, bias in logit_bias.items():
            if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
                raise InvalidArgumentError(f"logit_bias keys must be int token ids, got {key!r}")
            if key < 0:
                raise InvalidTokenError(f"logit_bias token id {key} is negative")
            if key > INT32_MAX:
                raise InvalidTokenError(f"logit_bias token id {key} is beyond any vocabulary (ids are int32)")
            # +inf on a banned (-inf) logit would give NaN; a large finite bias already forces a token
            value = -math.inf if bias == -math.inf else as_real(f"logit_bias[{key}]", bias, -BIAS_MAX, BIAS_MAX)
            items[int(key)] = value
        ids = np.fromiter(items.keys(), dtype=np.intp, count=len(items))
        order = np.argsort(ids)
        self.bias_ids = ids[order]
        # llama.cpp stores biases as float; keep the same rounding
        self.bias_vals = np.fromiter(items.values(), dtype=np.float32, count=len(items))[order]

    @property
    def penalties_on(self) -> bool:
        return penalties_on(self.repeat_penalty, self.frequency_penalty, self.presence_penalty, self.penalty_last_n)


class Configured:
    """The parameters both samplers take, checked once (``self._p``), and what they tell of them. A sampler sets
    up the rest in :meth:`_setup`."""

    _p: Params

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        penalty_last_n: int = 64,
        logit_bias: Mapping[int, float] | None = None,
        seed: int | None = None,
        vocab: VocabLike | None = None,
        grammar: str | None = None,
        grammar_root: str = "root",
    ) -> None:
        self._p = Params(
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
            penalty_last_n,
            logit_bias,
            seed,
        )
        self._setup(vocab, grammar, grammar_root)

    def _setup(self, vocab: VocabLike | None, grammar: str | None, grammar_root: str) -> None:
        raise NotImplementedError

    @property
    def penalties_on(self) -> bool:
        """True when the penalties change logits, so the history of emitted tokens matters."""
        return self._p.penalties_on

    @property
    def greedy(self) -> bool:
        """True when ``temperature <= 0``: sampling takes the argmax and draws nothing."""
        return self._p.temperature <= 0
