"""Regular languages over code points: a small expression tree, its DFA, products, and GBNF emission.

Strings constrained by a pattern, a format or a set of forbidden keys, and integers in a range, are emitted as a
deterministic automaton: one GBNF rule per state, whose alternatives start with disjoint characters. llama.cpp's
grammar engine then holds a single parse stack through such a string, whatever the pattern, so no pattern can make
its stack sets grow.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from ..limits import GRAMMAR_MAX_DFA_STATES, GRAMMAR_MAX_NFA_STATES, GRAMMAR_MAX_WORK
from .gbnf import Builder, TooLarge

__all__ = ["ANY", "Dfa", "Node", "chars", "dfa", "emit", "intersect", "length_dfa", "lit", "negate"]

MAX_CP = 0x10FFFF

Ranges = tuple[tuple[int, int], ...]

# Expression nodes: ("chars", ranges) | ("seq", (nodes)) | ("alt", (nodes)) | ("rep", node, lo, hi|None)
Node: TypeAlias = (
    tuple[Literal["chars"], Ranges]
    | tuple[Literal["seq", "alt"], tuple["Node", ...]]
    | tuple[Literal["rep"], "Node", int, int | None]
)
EMPTY: Node = ("seq", ())
ANY: Ranges = ((0, MAX_CP),)


def normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sorted, merged, non-overlapping ranges."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def negate(ranges: Ranges, universe: Ranges = ANY) -> Ranges:
    """The code points of ``universe`` outside ``ranges``."""
    out: list[tuple[int, int]] = []
    for ulo, uhi in universe:
        cur = ulo
        for lo, hi in ranges:
            if hi < cur or lo > uhi:
                continue
            if lo > cur:
                out.append((cur, lo - 1))
            cur = max(cur, hi + 1)
        if cur <= uhi:
            out.append((cur, uhi))
    return normalize(out)


def overlap(a: Ranges, b: Ranges) -> Ranges:
    """The code points in both ``a`` and ``b`` (sorted, disjoint ranges): one merge pass."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


class Work:
    """Steps an automaton construction has taken (ranges split, edges paired, states compared), counted against
    ``limits.GRAMMAR_MAX_WORK`` so that no pattern can hold the compiler for long."""

    def __init__(self) -> None:
        self.steps = 0

    def add(self, n: int) -> None:
        self.steps += n
        if self.steps > GRAMMAR_MAX_WORK:
            raise TooLarge(f"its automaton needs more than {GRAMMAR_MAX_WORK} steps to build (limits.GRAMMAR_MAX_WORK)")


def chars(ranges: Iterable[tuple[int, int]]) -> Node:
    return ("chars", normalize(ranges))


def lit(text: str) -> Node:
    return ("seq", tuple(("chars", ((ord(c), ord(c)),)) for c in text))


# ------------------------------------------------------------------------------------------------- NFA and DFA


class _Nfa:
    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.moves: list[list[tuple[int, int, int]]] = []

    def state(self) -> int:
        if len(self.eps) >= GRAMMAR_MAX_NFA_STATES:
            raise TooLarge(f"it needs more than {GRAMMAR_MAX_NFA_STATES} automaton states")
        self.eps.append([])
        self.moves.append([])
        return len(self.eps) - 1

    def build(self, node: Node, start: int) -> int:
        """Add ``node`` from ``start``; return its end state."""
        match node:
            case ("chars", ranges):
                end = self.state()
                for lo, hi in ranges:
                    self.moves[start].append((lo, hi, end))
                return end
            case ("seq", subs):
                cur = start
                for sub in subs:
                    cur = self.build(sub, cur)
                return cur
            case ("alt", subs):
                end = self.state()
                for sub in subs:
                    s = self.state()
                    self.eps[start].append(s)
                    self.eps[self.build(sub, s)].append(end)
                return end
            case ("rep", sub, lo, hi):
                return self._repeat(sub, lo, hi, start)
        raise AssertionError(f"not an expression node: {node!r}")

    def _repeat(self, sub: Node, lo: int, hi: int | None, start: int) -> int:
        """``sub`` from ``start``, ``lo`` to ``hi`` times (None: without bound); return the end state."""
        cur = start
        for _ in range(lo):
            cur = self.build(sub, cur)
        if hi is None:
            loop = self.state()
            self.eps[cur].append(loop)
            self.eps[self.build(sub, loop)].append(loop)
            return loop
        end = self.state()
        for _ in range(hi - lo):
            self.eps[cur].append(end)
            cur = self.build(sub, cur)
        self.eps[cur].append(end)
        return end

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen = set(states)
        todo = list(seen)
        while todo:
            for t in self.eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)


@dataclass
class Dfa:
    """A deterministic automaton: ``edges[s]`` lists (code point ranges, target); state 0 starts."""

    accept: list[bool] = field(default_factory=list)
    edges: list[list[tuple[Ranges, int]]] = field(default_factory=list)
    work: int = 0  # the steps its construction took (not its inputs'): what a grammar using it is charged

    def add(self, accepting: bool) -> int:
        if len(self.accept) >= GRAMMAR_MAX_DFA_STATES:
            raise TooLarge(f"it needs more than {GRAMMAR_MAX_DFA_STATES} automaton states")
        self.accept.append(accepting)
        self.edges.append([])
        return len(self.accept) - 1


def _split(moves: Sequence[tuple[int, int, int]], work: Work) -> list[tuple[Ranges, list[int]]]:
    """Partition the code points covered by ``moves`` (lo, hi, target) into ranges with the same set of targets: a
    sweep over the sorted range ends, each segment costing the targets active over it."""
    events = sorted([(lo, 1, t) for lo, _, t in moves] + [(hi + 1, -1, t) for _, hi, t in moves])
    work.add(len(events))
    active: dict[int, int] = {}
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    i = 0
    while i < len(events):
        at = events[i][0]
        while i < len(events) and events[i][0] == at:
            _, step, t = events[i]
            left = active.get(t, 0) + step
            if left:
                active[t] = left
            else:
                del active[t]
            i += 1
        if active and i < len(events):
            work.add(len(active))
            groups.setdefault(tuple(sorted(active)), []).append((at, events[i][0] - 1))
    return [(normalize(rs), list(ts)) for ts, rs in groups.items()]


def dfa(node: Node, minimal: bool = True) -> Dfa:
    """The pruned (and by default minimal) DFA of ``node``: every state can still reach acceptance. Raises
    TooLarge past the bounds."""
    nfa = _Nfa()
    start = nfa.state()
    end = nfa.build(node, start)
    out = Dfa()
    work = Work()
    first = nfa.closure([start])
    # An unanchored end leaves the NFA's end state taking any character back to itself: every set holding it
    # accepts anything from there on, so all are one state (else a set is made for each of its other members).
    at_end = nfa.closure([end])
    universal = any(lo == 0 and hi == MAX_CP and end in nfa.closure([t]) for s in at_end for lo, hi, t in nfa.moves[s])
    index = {first: out.add(end in first)}
    todo = [first]
    while todo:
        cur = todo.pop()
        work.add(len(cur))
        moves = [move for s in cur for move in nfa.moves[s]]
        for rs, targets in _split(moves, work):
            nxt = nfa.closure(targets)
            if universal and end in nxt:
                nxt = at_end
            if nxt not in index:
                index[nxt] = out.add(end in nxt)
                todo.append(nxt)
            out.edges[index[cur]].append((rs, index[nxt]))
    return _finish(out, minimal, work)


def _finish(d: Dfa, minimal: bool, work: Work) -> Dfa:
    out = minimize(prune(d), work) if minimal else prune(d)
    out.work = work.steps
    return out


def minimize(d: Dfa, work: Work | None = None) -> Dfa:
    """The equivalent DFA with the fewest states, for a DFA whose states are reachable and can reach acceptance (as
    :func:`prune` leaves them). Valmari and Lehtinen's refinement of states and transitions, which takes the smaller
    half of each split (Hopcroft) on partial automata, over the letters the edges' ranges cut the code points into:
    its work grows as m log n for m transitions, so a long chain (a counted repetition) costs linear work."""
    n = len(d.accept)
    if n == 0:
        return d
    work = work or Work()
    letters = _letters(d, work)
    tails: list[int] = []
    heads: list[int] = []
    labels: list[int] = []
    for q, es in enumerate(d.edges):
        for rs, t in es:
            for a in letters[rs]:
                tails.append(q)
                heads.append(t)
                labels.append(a)
    m = len(tails)
    work.add(n + m)
    into: list[list[int]] = [[] for _ in range(n)]  # transitions by target state
    for i, t in enumerate(heads):
        into[t].append(i)
    finals = [q for q in range(n) if d.accept[q]]
    blocks = _Partition([*finals, *(q for q in range(n) if not d.accept[q])], [n], work)
    blocks.mark_first(0, len(finals))
    blocks.split()
    by_label = sorted(range(m), key=labels.__getitem__)
    cords = _Partition(by_label, [len(list(g)) for _, g in itertools.groupby(by_label, labels.__getitem__)], work)
    b, c = 1, 0  # the next block and cord to split by; block 0 need not be one (Hopcroft's "all but one")
    while c < len(cords.first):
        for i in range(cords.first[c], cords.past[c]):
            blocks.mark(tails[cords.elems[i]])
        blocks.split()
        c += 1
        while b < len(blocks.first):
            for i in range(blocks.first[b], blocks.past[b]):
                for t in into[blocks.elems[i]]:
                    cords.mark(t)
            cords.split()
            b += 1
    return _quotient(d, blocks.set_of)


class _Partition:
    """A refinable partition of 0..n-1: the elements of each set lie together in ``elems`` (from ``first`` to
    ``past``), so marking elements and splitting the marked ones off costs the marked ones only."""

    def __init__(self, order: list[int], sizes: list[int], work: Work) -> None:
        self.elems = order
        self.loc = [0] * len(order)
        self.set_of = [0] * len(order)
        self.first: list[int] = []
        self.past: list[int] = []
        for i, e in enumerate(order):
            self.loc[e] = i
        at = 0
        for k, size in enumerate(sizes):
            self.first.append(at)
            self.past.append(at + size)
            for i in range(at, at + size):
                self.set_of[order[i]] = k
            at += size
        self.marked = [0] * len(sizes)
        self.touched: list[int] = []
        self.work = work

    def mark(self, e: int) -> None:
        s, i = self.set_of[e], self.loc[e]
        j = self.first[s] + self.marked[s]
        self.elems[i] = other = self.elems[j]
        self.loc[other] = i
        self.elems[j] = e
        self.loc[e] = j
        if not self.marked[s]:
            self.touched.append(s)
        self.marked[s] += 1
        self.work.add(1)

    def mark_first(self, s: int, count: int) -> None:
        """Mark the first ``count`` elements of set ``s`` as they lie."""
        if count:
            self.marked[s] = count
            self.touched.append(s)

    def split(self) -> None:
        """Split each touched set into its marked and unmarked elements; the smaller part becomes a new set."""
        while self.touched:
            s = self.touched.pop()
            j = self.first[s] + self.marked[s]
            self.marked[s] = 0
            if j == self.past[s]:
                continue
            if j - self.first[s] <= self.past[s] - j:
                self.first.append(self.first[s])
                self.past.append(j)
                self.first[s] = j
            else:
                self.first.append(j)
                self.past.append(self.past[s])
                self.past[s] = j
            self.marked.append(0)
            z = len(self.first) - 1
            for i in range(self.first[z], self.past[z]):
                self.set_of[self.elems[i]] = z
            self.work.add(self.past[z] - self.first[z])


def _letters(d: Dfa, work: Work) -> dict[Ranges, list[int]]:
    """Each range set of ``d``'s edges as the letters it covers: the coarsest cut of the code points such that
    every range set is a union of letters (a class used throughout is one letter, however many ranges it has).
    One sweep over the sorted range ends."""
    sets = list(dict.fromkeys(rs for es in d.edges for rs, _ in es))
    events = sorted(
        [(lo, 1, k) for k, rs in enumerate(sets) for lo, _ in rs]
        + [(hi + 1, -1, k) for k, rs in enumerate(sets) for _, hi in rs]
    )
    work.add(len(events))
    active: set[int] = set()
    letter: dict[frozenset[int], int] = {}
    covers: list[list[int]] = [[] for _ in sets]
    i = 0
    while i < len(events):
        at = events[i][0]
        while i < len(events) and events[i][0] == at:
            _, step, k = events[i]
            if step > 0:
                active.add(k)
            else:
                active.discard(k)
            i += 1
        if active:
            work.add(len(active))
            key = frozenset(active)
            if key not in letter:
                letter[key] = len(letter)
                for k in key:
                    covers[k].append(letter[key])
    return dict(zip(sets, covers, strict=True))


def _quotient(d: Dfa, block: list[int]) -> Dfa:
    """``d`` with the states of each block merged; blocks are numbered by their first state, the start's first."""
    n = len(d.accept)
    order = {block[0]: 0}
    for i in range(n):
        order.setdefault(block[i], len(order))
    out = Dfa()
    reps: dict[int, int] = {}
    for i in range(n):
        reps.setdefault(order[block[i]], i)
    for k in range(len(order)):
        out.add(d.accept[reps[k]])
    for k in range(len(order)):
        merged: dict[int, list[tuple[int, int]]] = {}
        for rs, t in d.edges[reps[k]]:
            merged.setdefault(order[block[t]], []).extend(rs)
        out.edges[k] = [(normalize(rs), t) for t, rs in merged.items()]
    return out


def prune(d: Dfa) -> Dfa:
    """Drop the states from which no accepting state can be reached (dead ends for a generator)."""
    back: list[list[int]] = [[] for _ in d.accept]
    for i, es in enumerate(d.edges):
        for _, t in es:
            back[t].append(i)
    live = {i for i, a in enumerate(d.accept) if a}
    todo = list(live)
    while todo:
        for i in back[todo.pop()]:
            if i not in live:
                live.add(i)
                todo.append(i)
    out = Dfa()
    if 0 not in live:
        return out
    order = [0, *sorted(live - {0})]
    renum = {old: new for new, old in enumerate(order)}
    for old in order:
        out.add(d.accept[old])
    for old in order:
        out.edges[renum[old]] = [(rs, renum[t]) for rs, t in d.edges[old] if t in live]
    return out


def intersect(a: Dfa, b: Dfa, minimal: bool = True) -> Dfa:
    """The product automaton: strings both accept."""
    out = Dfa()
    work = Work()
    if not a.accept or not b.accept:
        out.work = work.steps
        return out
    index = {(0, 0): out.add(a.accept[0] and b.accept[0])}
    todo = [(0, 0)]
    while todo:
        pa, pb = todo.pop()
        for rs_a, ta in a.edges[pa]:
            for rs_b, tb in b.edges[pb]:
                work.add(len(rs_a) + len(rs_b))
                rs = overlap(rs_a, rs_b)
                if not rs:
                    continue
                key = (ta, tb)
                if key not in index:
                    index[key] = out.add(a.accept[ta] and b.accept[tb])
                    todo.append(key)
                out.edges[index[(pa, pb)]].append((rs, index[key]))
    return _finish(out, minimal, work)


def length_dfa(lo: int, hi: int | None) -> Dfa:
    """Strings of ``lo`` to ``hi`` code points (``hi=None``: no upper bound)."""
    out = Dfa()
    top = hi if hi is not None else lo
    for i in range(top + 1):
        out.add(i >= lo)
    for i in range(top):
        out.edges[i].append((ANY, i + 1))
    if hi is None:
        out.edges[top].append((ANY, top))
    return out


def emit(b: Builder, d: Dfa, hint: str, encode: Callable[[Ranges], list[str]], final: str) -> str:
    """Rules for ``d``: each state's rule is its alternatives ``encode(ranges) target``, plus ``final`` where it
    accepts (``""``: the empty alternative). Returns the start state's rule name."""
    b.spend(sum(len(rs) for es in d.edges for rs, _ in es))
    names = [b.name(f"{hint}-{i}") for i in range(len(d.accept))]
    for i, es in enumerate(d.edges):
        # a long class (or escape group) is a rule of its own, shared by the states that take it
        alts = [
            f"{sym if len(sym) <= 64 else b.rule(hint + '-c', sym)} {names[t]}" for rs, t in es for sym in encode(rs)
        ]
        if d.accept[i]:
            if final:
                alts.append(final)
            else:
                alts.insert(0, "")  # a leading empty alternative: "a ::= | x" (a trailing one would swallow a line)
        if alts == [""]:
            body = '""'
        elif alts[0]:
            body = " | ".join(alts)
        else:
            body = "| " + " | ".join(alts[1:])
        b.define(names[i], body)
    return names[0]
