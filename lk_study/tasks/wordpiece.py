"""BERT-style WordPiece tokenizer, trained with Hugging Face ``tokenizers``.

    text --BertNormalizer (NFD, strip accents, lowercase)--> --BertPreTokenizer (whitespace and
    punctuation)--> words --WordPiece (greedy longest match, "##" continuations)--> ids

Special tokens come first, so their ids are fixed: [PAD] = 0 (our padding id), [UNK] = 1,
[SEP] = 2, [MASK] = 3. There is no [CLS]: the encoder prepends a learned [CLS] vector.
Learned word pieces follow (ids 4 .. num_regular − 1). When the corpus yields fewer pieces
than ``vocab_size``, the vocabulary is filled up with ``[unused0]``, ``[unused1]``, ... (as in
BERT's vocabulary), so a tokenizer trained with ``vocab_size = V`` always has exactly V ids and
a model pre-trained with it has a V-row embedding that a fine-tuned model can load.

Training is deterministic: ``tokenizers``' WordPiece trainer numbers the "##c" continuation
pieces in hash-map order and breaks ties between equally frequent merges by id, so the same
corpus can give different vocabularies (huggingface/tokenizers issue 1794). We register every
"##c" of the corpus's (sorted) alphabet up front, which fixes their ids; then every machine
that prepares the data trains the same tokenizer, and data-parallel ranks agree on the ids.

Sequences (the encoder adds [CLS] itself, so ``max_len`` counts tokens without it):

    single text   ids = s[:max_len]
    pair          ids = s₁' + [SEP] + s₂',  |s₁'| + |s₂'| = min(|s₁| + |s₂|, max_len − 1),
                  truncated longest-first: one token at a time from the longer sequence (the
                  second on a tie), as Hugging Face's ``longest_first`` strategy does.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lk_study.tasks.base import PAD_ID

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[SEP]", "[MASK]")  # [PAD] first: its id is PAD_ID
UNK_ID, SEP_ID, MASK_ID = (SPECIAL_TOKENS.index(t) for t in ("[UNK]", "[SEP]", "[MASK]"))
assert SPECIAL_TOKENS.index("[PAD]") == PAD_ID
NUM_SPECIAL = len(SPECIAL_TOKENS)
UNUSED = "[unused{}]"
BATCH = 10_000  # texts per encode_batch call (bounds the memory of Encoding objects)


def _is_punctuation(c: str) -> bool:
    """BERT's definition: ASCII symbols and Unicode category P* (always split off as words)."""
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def truncate_pair(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Lengths (n₁', n₂') after longest-first truncation of a pair to ``budget`` tokens.

    Equivalent to removing one token at a time from the longer sequence (the second on a
    tie) until n₁' + n₂' ≤ budget: n₁' = min(n₁, max(⌈budget/2⌉, budget − n₂)).
    """
    if n1 + n2 <= budget:
        return n1, n2
    a = min(n1, max((budget + 1) // 2, budget - n2))
    return a, budget - a


class WordPiece:
    """A trained WordPiece tokenizer: ``train``/``load``, ``save``, ``encode``, ``encode_pair``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        for i, tok in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(tok) != i:
                raise ValueError(
                    f"not an lk_study WordPiece tokenizer: {tok} must have id {i}, has "
                    f"{tokenizer.token_to_id(tok)} (train one with WordPiece.train)"
                )
        self.tokenizer = tokenizer
        unused = tokenizer.token_to_id(UNUSED.format(0))
        self.num_regular = tokenizer.get_vocab_size() if unused is None else unused

    @classmethod
    def train(
        cls,
        texts: Iterable[str] | Callable[[], Iterable[str]],
        vocab_size: int,
        lowercase: bool = True,
        min_frequency: int = 2,
    ) -> WordPiece:
        """Learn a vocabulary of exactly ``vocab_size`` ids, deterministically.

        ``texts``: a collection of texts, or a function returning a fresh iterator over them
        (the corpus is read twice: once for its characters, once to train).
        """
        read = texts if callable(texts) else (lambda: texts)
        if not callable(texts) and not isinstance(texts, Sequence):
            texts = list(texts)  # a one-shot iterator: keep it for the second pass
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        chars: set[str] = set()
        for text in read():
            chars.update(tok.normalizer.normalize_str(text))
        continuing = [f"##{c}" for c in sorted(chars) if not (c.isspace() or _is_punctuation(c))]
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[*SPECIAL_TOKENS, *continuing],
            show_progress=False,
        )
        tok.train_from_iterator(read(), trainer)
        # The "##c" pieces were registered as special tokens only to fix their ids; make them
        # ordinary vocabulary entries again (same ids), so text "##c" is not matched literally.
        spec = json.loads(tok.to_str())
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIAL_TOKENS]
        tok = Tokenizer.from_str(json.dumps(spec))
        size = tok.get_vocab_size()
        if size > vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the special tokens and the corpus's "
                f"characters alone need {size} ids; use vocab_size >= {size}"
            )
        if size < vocab_size:  # fill up to exactly vocab_size ids, like BERT's [unused] slots
            tok.add_special_tokens([UNUSED.format(i) for i in range(vocab_size - size)])
        return cls(tok)

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordPiece:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file not found: {path} (expected a tokenizer.json written by "
                f"lk_study, e.g. the one `wikitext103_mlm` prepares)"
            )
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json atomically (a file that exists is whole)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        self.tokenizer.save(str(tmp))
        tmp.replace(path)
        return path

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int32, no special tokens added) of each text."""
        out: list[np.ndarray] = []
        for i in range(0, len(texts), BATCH):
            encs = self.tokenizer.encode_batch(list(texts[i : i + BATCH]), add_special_tokens=False)
            out.extend(np.asarray(e.ids, dtype=np.int32) for e in encs)
        return out

    def encode(self, text: str, max_len: int = 0) -> np.ndarray:
        """ids = s[:max_len] (``max_len`` 0: no truncation)."""
        ids = self.encode_batch([text])[0]
        return ids[:max_len] if max_len else ids

    def encode_pairs(
        self, first: Sequence[str], second: Sequence[str], max_len: int
    ) -> list[np.ndarray]:
        """ids = s₁' + [SEP] + s₂' per pair, at most ``max_len`` tokens (longest-first)."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1 for a pair (room for [SEP]), got {max_len}")
        sep = np.asarray([SEP_ID], dtype=np.int32)
        out = []
        for a, b in zip(self.encode_batch(first), self.encode_batch(second), strict=True):
            n1, n2 = truncate_pair(len(a), len(b), max_len - 1)
            out.append(np.concatenate([a[:n1], sep, b[:n2]]))
        return out

    def encode_pair(self, first: str, second: str, max_len: int) -> np.ndarray:
        return self.encode_pairs([first], [second], max_len)[0]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
