"""A first generation: ``python -m llamacffi.demo [PROMPT]`` streams a greedy continuation from the default model."""

from __future__ import annotations

import sys

import numpy as np

from . import Context, Model, models


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    prompt = " ".join(args) or "The capital of France is"
    with Model.load(models.fetch()) as model, Context(model, n_ctx=512) as ctx:
        vocab = model.vocab
        pos = ctx.decode_tokens(vocab.tokenize(prompt))
        stream = vocab.stream()
        sys.stdout.write(prompt)
        for _ in range(48):
            token = int(np.argmax(ctx.logits()))
            if vocab.is_eog(token):
                break
            sys.stdout.write(stream.feed(token))
            sys.stdout.flush()
            ctx.decode_token(token, pos)
            pos += 1
        sys.stdout.write(stream.flush() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
