"""llama.cpp's own ``llama-server`` from the same build, as a long-lived tokenizer (``/tokenize``, ``/detokenize``).

``llama-tokenize`` loads the vocabulary again for every string (a second or so for Gemma's 262k tokens on a busy
machine), so the differential tokenizer run asks ``llama-server``, which calls the same ``common_tokenize``, for
all strings and checks a sample against ``llama-tokenize`` itself.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RawServer:
    """``llama-server -m MODEL`` on a free loopback port until :meth:`close`."""

    def __init__(self, binary: Path, model: Path, *, timeout: float = 300) -> None:
        import httpx

        port = free_port()
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "512", "-np", "1",
             "-t", "1", "--log-disable"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.close()
        raise RuntimeError("llama-server did not become ready")

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        body = {"content": text, "add_special": add_special, "parse_special": parse_special}
        r = self.client.post("/tokenize", json=body)
        r.raise_for_status()
        return [int(t) for t in r.json()["tokens"]]

    def detokenize(self, tokens: list[int]) -> str:
        r = self.client.post("/detokenize", json={"tokens": tokens})
        r.raise_for_status()
        return str(r.json()["content"])

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
