"""Every target of the benchmarks, in one place: the report judges by these and prints them."""

from __future__ import annotations

PEER = "llama-cpp-python"

# Ratios to llama.cpp's own programs (llamacffi ÷ reference, higher is better unless named *_MAX).
PP_BATCH = 0.99  # one Batch decode of pp tokens vs llama-bench pp
TG_PYTHONIC = 0.97  # the Pythonic decode loop vs llama-bench tg
SERVICE_GENERATE = 0.95  # the service's greedy generate vs llama-bench tg
SERVICE_VS_PEER = 1.15  # the same vs llama-cpp-python's __call__
TTFT_WARM_MAX = 0.25  # time to first token with 90% of the prompt shared, ÷ cold
SCALING_4_STREAMS = 1.8  # 4 concurrent streams ÷ 1 stream, service aggregate tokens/s

# The numpy Sampler, µs per call, by vocabulary size.
SAMPLER_US_SMALL_VOCAB = 40.0  # up to SMALL_VOCAB tokens
SAMPLER_US_LARGE_VOCAB = 150.0
SMALL_VOCAB = 65536

# Serving (llamacffi serve ÷ llama-server, or ÷ llama-cpp-python's server), by concurrent clients.
SERVING_TPS_VS_SERVER = {1: 0.95, 4: 1.0, 8: 1.0}
SERVING_TPS_VS_PEER = {8: 2.0}
SERVING_TTFT_P50_VS_SERVER_MAX = {1: 1.1}
SERVING_ITL_P99_VS_SERVER_MAX = {8: 1.2}


def sampler_limit_us(n_vocab: int) -> float:
    return SAMPLER_US_SMALL_VOCAB if n_vocab <= SMALL_VOCAB else SAMPLER_US_LARGE_VOCAB
