"""Bad model files raise ModelLoadError (a LlamaError and an OSError); none crashes the interpreter."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import pytest

import llamacffi
from llamacffi import InvalidArgumentError, ModelLoadError, TokenizeError, gguf
from llamacffi.sampling import NativeSampler


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        llamacffi.Model.load(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="directory"):
        llamacffi.Model.load(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="empty"):
        llamacffi.Model.load(write(tmp_path, "empty.gguf", b""))


def test_a_named_pipe_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)  # opening it to read would wait for a writer for ever
    with pytest.raises(ModelLoadError, match="not a regular file"):
        llamacffi.Model.load(fifo)


def test_the_metadata_check_of_an_empty_file_is_a_load_error(tmp_path: Path) -> None:
    # What `llamacffi serve` checks before it binds; mmap refuses an empty file with a ValueError of its own.
    with pytest.raises(ModelLoadError, match="empty"):
        gguf.check(write(tmp_path, "empty.gguf", b""))


def test_random_bytes(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        llamacffi.Model.load(write(tmp_path, "random.gguf", b"\0" + os.urandom(4095)))


def test_random_bytes_behind_gguf_magic(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not load"):
        llamacffi.Model.load(write(tmp_path, "magic.gguf", b"GGUF" + os.urandom(8192)))


@pytest.mark.parametrize("keep", [4, 64, 1 << 20, 0.5, 0.999])
def test_truncated_gguf(tmp_path: Path, smollm2_path: Path, keep: float) -> None:
    data = smollm2_path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else int(keep)
    with pytest.raises(ModelLoadError, match="could not load"):
        llamacffi.Model.load(write(tmp_path, "truncated.gguf", data[:n]))


def test_errors_are_catchable_as_builtins(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        llamacffi.Model.load(tmp_path / "nope.gguf")
    with pytest.raises(llamacffi.LlamaError):
        llamacffi.Model.load(tmp_path / "nope.gguf")


def test_wrong_path_type() -> None:
    with pytest.raises(TypeError):
        llamacffi.Model.load(42)  # type: ignore[arg-type]


def test_progress_callback_cancels_and_reraises(smollm2_path: Path) -> None:
    seen: list[float] = []

    def cancel(p: float) -> bool:
        seen.append(p)
        return False

    with pytest.raises(ModelLoadError, match="cancelled"):
        llamacffi.Model.load(smollm2_path, progress=cancel)
    assert seen and 0.0 <= seen[0] <= 1.0

    def boom(p: float) -> None:
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        llamacffi.Model.load(smollm2_path, progress=boom)

    progress: list[float] = []
    with llamacffi.Model.load(smollm2_path, progress=progress.append) as m:
        assert m.n_params > 0
    assert progress[-1] == pytest.approx(1.0)


def gguf_bytes(kv: list[tuple[str, int, bytes]]) -> bytes:
    """A GGUF file with no tensors and the given (key, value type, encoded value) pairs."""

    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text.encode())) + text.encode()

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for key, vtype, value in kv:
        out += s(key) + struct.pack("<I", vtype) + value
    return out


def string_value(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def string_array(items: list[str]) -> bytes:
    return struct.pack("<IQ", 8, len(items)) + b"".join(string_value(t) for t in items)


@pytest.mark.parametrize("layers", [0, 1000])
def test_layer_count_out_of_range(tmp_path: Path, layers: int) -> None:
    # llama.cpp asserts 0 < block_count <= LLAMA_MAX_LAYERS, which would abort the process
    data = gguf_bytes(
        [("general.architecture", 8, string_value("llama")), ("llama.block_count", 4, struct.pack("<I", layers))]
    )
    with pytest.raises(ModelLoadError, match="block_count"):
        llamacffi.Model.load(write(tmp_path, "layers.gguf", data))


@pytest.mark.parametrize("vocab_only", [False, True])
def test_vocabulary_with_a_repeated_token(tmp_path: Path, vocab_only: bool) -> None:
    data = gguf_bytes(
        [
            ("general.architecture", 8, string_value("llama")),
            ("llama.block_count", 4, struct.pack("<I", 1)),
            ("tokenizer.ggml.model", 8, string_value("llama")),
            ("tokenizer.ggml.tokens", 9, string_array(["a", "b", "a"])),
        ]
    )
    with pytest.raises(ModelLoadError, match="more than once"):
        llamacffi.Model.load(write(tmp_path, "dup.gguf", data), vocab_only=vocab_only)


def test_tokenizer_arrays_of_other_lengths(tmp_path: Path) -> None:
    data = gguf_bytes(
        [
            ("general.architecture", 8, string_value("llama")),
            ("tokenizer.ggml.tokens", 9, string_array(["a", "b"])),
            ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 1) + struct.pack("<f", 0.0)),
        ]
    )
    with pytest.raises(ModelLoadError, match="scores"):
        llamacffi.Model.load(write(tmp_path, "scores.gguf", data), vocab_only=True)


def test_real_models_pass_the_metadata_check(smollm2_path: Path, gemma3_path: Path) -> None:
    for path in (smollm2_path, gemma3_path):
        meta = gguf.read_metadata(path, {"{arch}.block_count", "tokenizer.ggml.tokens"})
        assert 0 < meta["{arch}.block_count"] <= gguf.MAX_LAYERS
        gguf.check(path)


def test_metadata_check_accepts_what_llama_cpp_accepts(tmp_path: Path) -> None:
    def check(kv: list[tuple[str, int, bytes]], vocab_only: bool = False) -> None:
        gguf.check(write(tmp_path, "m.gguf", gguf_bytes(kv)), vocab_only)

    arch = ("general.architecture", 8, string_value("llama"))
    check([arch, ("tokenizer.ggml.tokens", 9, string_array(["", "a", ""]))])  # empty texts get names of their own
    check(
        [
            arch,
            ("tokenizer.ggml.tokens", 9, string_array(["a", "b"])),
            ("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, 1, 1)),
        ]
    )  # longer
    check(
        [arch, ("tokenizer.ggml.tokens", 9, string_array(["a"])), ("tokenizer.ggml.scores", 6, struct.pack("<f", 0.0))]
    )  # not an array: llama.cpp's own error
    check([arch, ("llama.block_count", 4, struct.pack("<I", 0))], vocab_only=True)  # a vocab-only load reads no layers
    with pytest.raises(ModelLoadError, match="block_count"):  # the architecture may come after its keys
        check([("llama.block_count", 4, struct.pack("<I", 0)), arch])


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


LLAMA = ("general.architecture", 8, string_value("llama"))
ONE_LAYER = ("llama.block_count", 4, u32(1))


@pytest.mark.parametrize(
    ("kv", "words"),
    [
        ([("llama.expert_count", 4, u32(100_000))], "expert_count is 100000"),
        ([("llama.expert_used_count", 4, u32(2))], "expert_used_count"),  # used experts, and none to use
        ([("llama.expert_count", 4, u32(8)), ("llama.expert_used_count", 4, u32(9))], "expert_used_count"),
        ([("llama.expert_count", 4, u32(8))], "expert_used_count"),  # experts, none used
        ([("llama.expert_group_count", 4, u32(2))], "groups"),
        (
            [
                ("llama.expert_count", 4, u32(8)),
                ("llama.expert_used_count", 4, u32(2)),
                ("llama.expert_group_count", 4, u32(8)),
            ],
            "expert_group_count",
        ),
        (
            [
                ("llama.expert_count", 4, u32(8)),
                ("llama.expert_used_count", 4, u32(2)),
                ("llama.expert_group_count", 4, u32(3)),
                ("llama.expert_group_used_count", 4, u32(1)),
            ],
            "groups",
        ),  # groups that do not divide the experts
        (
            [("llama.expert_count", 4, u32(8)), ("llama.expert_used_count", 9, struct.pack("<IQI", 4, 1, 9))],
            "expert_used_count",
        ),  # one count per layer
        ([("llama.rope.scaling.type", 8, string_value("bogus"))], "rope.scaling.type"),
    ],
)
def test_metadata_llama_cpp_asserts_on_is_a_load_error(
    tmp_path: Path, kv: list[tuple[str, int, bytes]], words: str
) -> None:
    # Each would end the process in llama.cpp's hyper-parameter checks (GGML_ASSERT); the message names the key.
    with pytest.raises(ModelLoadError, match=words.replace(".", r"\.")):
        llamacffi.Model.load(write(tmp_path, "m.gguf", gguf_bytes([LLAMA, ONE_LAYER, *kv])))


def test_mixtures_of_experts_llama_cpp_supports_pass(tmp_path: Path) -> None:
    experts = [("llama.expert_count", 4, u32(8)), ("llama.expert_used_count", 4, u32(2))]
    for kv in (
        experts,
        [*experts, ("llama.expert_group_count", 4, u32(4)), ("llama.expert_group_used_count", 4, u32(2))],
        [experts[0], ("llama.expert_used_count", 9, struct.pack("<IQI", 4, 1, 2))],  # per layer
        [("llama.rope.scaling.type", 8, string_value("yarn"))],
    ):
        gguf.check(write(tmp_path, "m.gguf", gguf_bytes([LLAMA, ONE_LAYER, *kv])))


@pytest.mark.parametrize("vocab_only", [False, True])
@pytest.mark.parametrize(
    "texts",
    [["a", "", "[EMPTY_1]"], ["a", "b\0x", "b"]],
    ids=["an empty text named as another", "texts equal up to a NUL"],
)
def test_token_texts_llama_cpp_reads_as_one_are_a_repeated_token(
    tmp_path: Path, vocab_only: bool, texts: list[str]
) -> None:
    # llama.cpp reads each text as a C string and names an empty one [EMPTY_<index>]: two texts, one entry.
    data = gguf_bytes(
        [
            LLAMA,
            ONE_LAYER,
            ("tokenizer.ggml.model", 8, string_value("llama")),
            ("tokenizer.ggml.tokens", 9, string_array(texts)),
        ]
    )
    with pytest.raises(ModelLoadError, match="more than once"):
        llamacffi.Model.load(write(tmp_path, "dup.gguf", data), vocab_only=vocab_only)


def vocabulary_file(tmp_path: Path, tokenizer: str, tokens: list[str]) -> Path:
    """A GGUF file whose vocabulary loads (vocab_only) with ``tokenizer`` and ``tokens``."""
    hyper = [("llama.context_length", 4, u32(64)), ("llama.embedding_length", 4, u32(8)), ONE_LAYER]
    hyper += [("llama.feed_forward_length", 4, u32(8)), ("llama.attention.head_count", 4, u32(1))]
    hyper += [("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)), ("llama.vocab_size", 4, u32(16))]
    vocab = [("tokenizer.ggml.model", 8, string_value(tokenizer))]
    if tokens:
        n = len(tokens)
        vocab += [("tokenizer.ggml.tokens", 9, string_array(tokens))]
        vocab += [("tokenizer.ggml.scores", 9, struct.pack(f"<IQ{n}f", 6, n, *[0.0] * n))]
        vocab += [("tokenizer.ggml.token_type", 9, struct.pack(f"<IQ{n}i", 5, n, *[1] * n))]
    return write(tmp_path, f"{tokenizer}.gguf", gguf_bytes([LLAMA, *hyper, *vocab]))


def test_a_vocabulary_without_byte_tokens_cannot_tokenize_unknown_text(tmp_path: Path) -> None:
    # llama.cpp's SentencePiece tokenizer looks up <0xXX> for a character it does not know, with a throwing .at().
    path = vocabulary_file(tmp_path, "llama", ["<unk>", "<s>", "</s>", "\u2581", "a", "b"])
    with llamacffi.Model.load(path, vocab_only=True) as model:
        with pytest.raises(TokenizeError, match="could not tokenize"):
            model.vocab.tokenize("hello")
        assert list(model.vocab.tokenize("ab", add_special=False)) == [3, 4, 5]  # and the model goes on


def test_a_model_without_a_vocabulary_refuses_what_needs_one(tmp_path: Path) -> None:
    # Vocabulary type none: llama.cpp asserts on each token's text, piece and attributes, and in its tokenizer.
    with llamacffi.Model.load(vocabulary_file(tmp_path, "none", []), vocab_only=True) as model:
        vocab = model.vocab
        assert not vocab.has_tokenizer
        for call in (
            lambda: vocab.tokenize("hello"),
            lambda: vocab.token_to_piece(5),
            lambda: vocab.token_to_piece(5, special=True),
            lambda: vocab.text(5),
            lambda: vocab.is_control(5),
            lambda: vocab.is_eog(5),
        ):
            with pytest.raises(TokenizeError, match="no vocabulary"):
                call()
        with pytest.raises(InvalidArgumentError, match="vocabulary type is none"):
            NativeSampler(vocab=vocab, grammar='root ::= "a"')


def test_the_check_counts_a_vocabulary_s_numbers_without_reading_them(tmp_path: Path) -> None:
    # a scores array as large as a big vocabulary's, times ten: only its length matters to the check
    n = 4_000_000
    data = gguf_bytes(
        [
            ("general.architecture", 8, string_value("llama")),
            ("llama.block_count", 4, struct.pack("<I", 1)),
            ("tokenizer.ggml.tokens", 9, string_array(["a", "b"])),
            ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, n) + bytes(4 * n)),
            ("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, n) + bytes(4 * n)),
        ]
    )
    path = write(tmp_path, "scores.gguf", data)
    tracemalloc.start()
    try:
        gguf.check(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n  # bytes: a list of the scores would be over 30 times that
