"""Every bound llamacffi checks arguments against, named once (the Pythonic layer and the service read them here).

Bounds come from three places: llama.cpp's C types (int32 ids, positions and sequence ids), what llama.cpp would
abort or misbehave on (a grammar nested too deep, a temperature small enough to overflow), and sizes past which a
request is a mistake rather than a plan (a 4M-token batch).
"""

from __future__ import annotations

from .raw import lib

INT32_MAX = (1 << 31) - 1  # llama_token, llama_pos and llama_seq_id are int32_t
UINT32_MAX = (1 << 32) - 1

# ---- sizes ----------------------------------------------------------------------------------------------------
MAX_TOKENS = 1 << 22  # the most tokens a Batch or a Context (n_ctx, n_batch) holds
MAX_CTX = MAX_TOKENS
MAX_SEQ = int(lib.llama_max_parallel_sequences())  # sequences of one context
MAX_THREADS = 1024  # threads of one context
MAX_GPU_LAYERS = INT32_MAX  # what n_gpu_layers=-1 ("all") becomes

# ---- sampling ---------------------------------------------------------------------------------------------------
# Bound of temperatures, penalties and biases: float32 arithmetic on logits stays finite within it. The sampler
# needs no other bound, so the service takes the same one.
SAMPLING_MAX = 1e6
TEMPERATURE_MAX = SAMPLING_MAX
PENALTY_MAX = SAMPLING_MAX
BIAS_MAX = SAMPLING_MAX
# The smallest temperature llama.cpp's sampler takes: it divides logits by it, and an overflow to +inf gives NaN.
NATIVE_MIN_TEMPERATURE = 1e-6
# llama.cpp allocates a penalty window up front; penalty_last_n=-1 ("whole history") becomes this window there.
PENALTY_WINDOW_MAX = 1 << 20
SEED_MAX = UINT32_MAX

# llama.cpp parses a grammar and checks it for left recursion by recursing over its nesting and its rules; past
# a few thousand levels that overflows the C stack. No real grammar comes near these limits.
GRAMMAR_MAX_NESTING = 256
GRAMMAR_MAX_RULES = 10_000
# llama.cpp expands each repetition x{m,n} into max(m, n) copies of x when it parses a grammar, and every parse
# step walks them: past this many copies in all, a grammar (the request's own GBNF) is refused. A compiled schema
# stays within GRAMMAR_MAX_COST, below it.
GRAMMAR_MAX_REPEATED = 40_000
# llama.cpp's grammar keeps every parse an ambiguous grammar allows; their number can grow exponentially with each
# character, and every step costs in proportion to it. A grammar past this many parse stacks (or, with deep stacks,
# past this many times 4,096 for their number times their total depth) is stopped.
GRAMMAR_MAX_STACKS = 1024
# Stacks one advance step may reach from a rule reference: a rule that reaches itself through rules matching nothing
# makes it unbounded (llama.cpp then loops until memory runs out); such a grammar is refused before llama.cpp sees it.
GRAMMAR_MAX_BREADTH = 4096
# Alternatives a compiled schema lets one parse step start at once (the values of an enum whose spellings share a
# prefix, a run of optional properties): llama.cpp holds a stack for each, so past this the schema is refused.
GRAMMAR_MAX_ALTERNATIVES = 512
# Steps the schema compiler may take building the automata of one schema (patterns, formats, bounded numbers:
# ranges split, edges paired, states compared), which bounds its time on any schema a client sends.
GRAMMAR_MAX_WORK = 1_000_000

# The compiled JSON Schema grammar's sizes: pattern automata (NFA states built, DFA states kept), repetition counts
# (llama.cpp reads a bound above 2000 as unbounded and refuses a lower bound above it), rules the grammar may cost
# llama.cpp (its own and those its repetitions expand to), and $ref hops followed in a row.
GRAMMAR_MAX_NFA_STATES = 20_000
GRAMMAR_MAX_DFA_STATES = 2_000
GRAMMAR_MAX_REPEAT = 2000
GRAMMAR_MAX_PATTERN_COUNT = 1000  # a pattern's {m,n}
GRAMMAR_MAX_COST = 20_000
GRAMMAR_MAX_REF_CHAIN = 32
# Integer bounds of a schema are refused from this many digits on (no grammar could enforce them, and Python cannot
# print an integer of more than 4300 digits); number bounds with more significant digits than this are refused.
GRAMMAR_MAX_BOUND_DIGITS = 1000
GRAMMAR_MAX_SIGNIFICANT = 15
# What the grammar lets a model write: whitespace of a line break and at most this many blanks, numbers of at most
# this many digits before the point and after it, so that a model cannot spin for ever on blanks or digits.
GRAMMAR_MAX_INDENT = 16
GRAMMAR_MAX_DIGITS = 16
GRAMMAR_MAX_FRACTION = 18

# ---- loading ----------------------------------------------------------------------------------------------------
NUMA_STRATEGIES = ("disabled", "distribute", "isolate", "numactl", "mirror")
# Why huge_pages refuses use_mmap=True (after the argument's name).
HUGE_PAGES_WITH_MMAP = (
    "does not go with use_mmap=True (huge pages back memory the weights are read into, not a mapped file)"
)

# ---- placement and RPC -----------------------------------------------------------------------------------------
MAX_DEVICES = int(lib.llama_max_devices())  # devices of one model; llama.cpp reads tensor_split up to this many
SPLIT_MODES = ("none", "layer", "row")
# Seconds to connect to an RPC server and get its HELLO answer before a load is refused.
RPC_PROBE_TIMEOUT = 5.0
# Seconds a worker process serving an RPC model may stay silent while it has requests before it is presumed stuck
# (a host gone without closing its connection) and stopped.
RPC_STALL_TIMEOUT = 120.0
# A model's worker process tells it is loading or decoding this often at most (or a quarter of the stall timeout), and
# decodes steps of at most this many tokens (one llama.cpp micro-batch): its steps tell it is not stuck.
WORKER_PROGRESS_EVERY_S = 0.5
WORKER_STEP_TOKENS_MAX = 512
# How long a closed model's worker may take to end before it is killed.
WORKER_CLOSE_GRACE_S = 2.0
# A worker reads its pipe at all times (its engine decodes on another thread): one that takes no byte of a message for
# this long (or the stall timeout, if shorter) is stuck, and is stopped.
WORKER_PIPE_STALL_S = 2.0

# ---- chat templates -------------------------------------------------------------------------------------------------
# Chat templates come with the model file and run in a bounded sandbox (``chat_sandbox``). One render may give at most
# this many characters, and make no string or list longer with one operator, filter or call (``'a' * 10**10``).
CHAT_TEMPLATE_MAX_CHARS = 1 << 26
# The most characters and list items one render may make in all, by operators, filters and calls.
CHAT_TEMPLATE_MAX_MADE = 1 << 30
# The most steps one render may take in all: loop iterations, ``range`` items, macro, block and recursive loop calls,
# and the items gone through one by one (a container's walked before it becomes text or is compared, a filter's
# value's, a lazy filter's, a split's pieces), so that nested loops or a macro calling itself twice cannot run for ever.
CHAT_TEMPLATE_MAX_STEPS = 1 << 22
# The most characters one render may read in all by comparing, searching or scanning (``x in s``, ``s.find(t)``,
# ``s|trim``), a container counted as its text: a search through one long text, looped, could run for hours.
CHAT_TEMPLATE_MAX_READ = 1 << 30
# The most bits an integer ``**`` in a template may give (``{{ 10**10**10 }}`` would compute for ever).
CHAT_TEMPLATE_MAX_POWER_BITS = 4096

# ---- the server ------------------------------------------------------------------------------------------------------
# A request's text up to this many characters is templated and tokenized on the event loop; a longer one in a worker
# thread, so that it cannot hold up the other streams.
INLINE_TEXT_CHARS = 1 << 14
# The largest request body (413 past it), the most choices one request asks for (prompts x n, best_of), the most
# stop strings, and the most texts one embeddings request sends.
MAX_BODY_BYTES = 8 << 20
MAX_CHOICES = 16
MAX_STOPS = 16
MAX_EMBEDDING_INPUTS = 2048

# ---- the service's per-model and per-request sizes ---------------------------------------------------------------
CONTEXT_SIZE_MIN = 16
CONTEXT_SIZE_MAX = 1 << 20
BATCH_SIZE_MAX = 1 << 16
PARALLEL_MAX = 256
MAX_NEW_TOKENS = 1 << 20
# A request's special tokens written out (GenerationOptions.preserved_tokens): a chat template's few markers.
PRESERVED_TOKENS_MAX = 32
TOKEN_TEXT_MAX = 256
# A burst of requests is admitted together once none has arrived for a batch window, held at most this many windows;
# a window is at most a second (beyond that it is a delay, not a batch).
BATCH_WINDOW_HOLDS = 4
BATCH_WINDOW_MAX = 1.0
# Prompts evicted from the slots are kept in host memory (the default budget, in MiB, of each text model; llama.cpp's
# server keeps 8 GiB). One is saved when its slot loses at least this many tokens, and restored when it gives at
# least this many more than any slot: a few tokens are cheaper to decode than a sequence's memory is to copy.
PROMPT_CACHE_MIB = 2048
PROMPT_CACHE_MIB_MAX = 1 << 24
PROMPT_CACHE_MIN_TOKENS = 8
