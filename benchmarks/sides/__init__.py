"""What is measured: llamacffi's layers, llama.cpp's own programs, llama-cpp-python, the servers."""
