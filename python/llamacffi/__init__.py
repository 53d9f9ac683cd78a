"""llamacffi: a fast, safe Python binding over llama.cpp."""
from ._version import __version__
