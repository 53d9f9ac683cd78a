"""Side-by-side benchmarks of llamacffi and raw llama.cpp built from the same tree and flags."""
