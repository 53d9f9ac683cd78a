"""Token sampling over a logits row: a pure-numpy :class:`Sampler` and :class:`NativeSampler` over llama.cpp's chain.

A logits row is a 1-D float array of length ``n_vocab`` (one raw, unnormalised score per token id). It is often a
zero-copy, read-only view into llama.cpp's memory that stays valid only until the next decode, so nothing here writes
into it or keeps it: every function copies the few entries it changes.

Both samplers follow llama.cpp's common sampler order::

    logit_bias -> penalties -> (temperature <= 0: argmax) -> top_k -> top_p -> min_p -> temperature -> draw

Ties between equal logits are broken by the lower token id everywhere in the pure-numpy path, so results are
reproducible: the same seed, logits and history give the same tokens.

Modules: :mod:`.params` (checked parameters), :mod:`.kernels` (numpy kernels), :mod:`.sampler` (:class:`Sampler`),
:mod:`.native` (:class:`NativeSampler`), :mod:`.grammar` (the GBNF pre-parser).
"""

from .constraint import Constraint, VocabLike
from .grammar import GRAMMAR_MAX_NESTING, GRAMMAR_MAX_RULES
from .kernels import greedy, penalize, top_k_indices, top_p_count
from .native import NativeSampler
from .params import FloatArray, HistoryLike, IdArray, penalties_on
from .sampler import Sampler

__all__ = [
    "GRAMMAR_MAX_NESTING",
    "GRAMMAR_MAX_RULES",
    "Constraint",
    "FloatArray",
    "HistoryLike",
    "IdArray",
    "NativeSampler",
    "Sampler",
    "VocabLike",
    "greedy",
    "penalize",
    "penalties_on",
    "top_k_indices",
    "top_p_count",
]
