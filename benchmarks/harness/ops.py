"""Names of the per-call operations the micro benchmarks time (shared by the side that measures and the report)."""

OPS = {
    "tokenize_1kb": "tokenize 1 KB of text",
    "token_to_piece": "token_to_piece (one token)",
    "detokenize_100": "detokenize 100 tokens",
    "decode_1": "decode 1 token",
    "logits": "logits of the last decode (ctx.logits())",
    "sampler": "numpy Sampler, top-k 40 + temp 0.8",
    "native_sampler": "NativeSampler, top-k 40 + temp 0.8",
}
