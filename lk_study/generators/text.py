"""A grammar of English-like text and GLUE label rules: the offline stand-ins (``source: generate``)
of WikiText-103 and GLUE, built by ``lk_study.tasks.wikitext.synthetic`` and
``lk_study.tasks.glue.synthetic`` in the hub's schema.

Why: offline ``--smoke`` studies, tests and CI need text tasks that build without a download.
This is NOT a benchmark: scores on it say nothing about WikiText-103 or GLUE. The data is
built in memory and goes through the same code path as hub or PATH data (tokenizer training,
packing, masking, label parsing), so only ``datasets.load_dataset`` is replaced.

Sentences come from a small grammar over ~250 words in disjoint classes (``WORDS``):

    clause   D A* N R? V D A* N (P D A* N)?      "The old farmer quickly painted the boat
                                                  near the river."
    D determiner, A adjective (neutral, positive or negative), N noun or place, R adverb,
    V verb (past tense), P preposition; clauses may be joined by a conjunction (C).

Content words are the nouns, places, adjectives and verbs; content(s) is their set in s.
GLUE rows draw from a core of ~110 of the words (``GLUE_WORDS``), so that 512 training rows
see each word often enough to learn the overlap rules from it.

WikiText-103 (``Salesforce/wikitext``, ``wikitext-103-raw-v1``): splits train / validation /
test with one ``text`` row per line, in the raw layout: `` = Title = `` and `` = = Section = = ``
heading lines, blank rows, and paragraphs of 2-6 sentences with spaced punctuation
(`` In 1854 , Arden painted the old boat . ``); 2000 / 200 / 200 paragraphs.

GLUE (``nyu-mll/glue``, one config per task): the hub's columns, ``ClassLabel`` names (float32
for stsb), ``idx`` int32 and splits (mnli: validation/test matched and mismatched), test
splits labelled −1; 512 train rows, 128 per validation split, 64 per test split. Each label
is a rule of the text (the functions below), so it can be learned: a bag-of-words logistic
regression (with shared-word features for pairs) scores well above chance, and a tiny encoder
trained from scratch for a few hundred steps beats chance (sst2, cola quickly; the overlap
tasks more slowly):

    cola   acceptable iff the word classes follow the grammar (``grammatical``); unacceptable
           sentences are a grammatical sentence with its words shuffled
    sst2   positive iff it has more positive than negative adjectives (``sentiment`` > 0)
    mrpc   equivalent iff Jaccard(content(s1), content(s2)) >= 1/2; s2 is s1 with some
    qqp    content words replaced (qqp: as questions)
    stsb   score = 5 · Jaccard(content(s1), content(s2)), rounded to 0.01
    rte    entailment iff content(s2) ⊆ content(s1) (``entailed``); s2 is subject, verb and
    wnli   object of s1, or that with two content words s1 lacks; wnli the same with its label
    qnli   order (0 = not_entailment) and a two-clause premise; qnli with the question as s2
    mnli   neutral if the hypothesis has a content word the premise lacks, else contradiction
           if it is negated ("never"), else entailment; the mismatched genre has two-clause
           premises

Every split is seeded by (repo, config, split), not by a config field: two calls give
identical data.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

WORDS: dict[str, tuple[str, ...]] = {
    "determiner": ("the", "this", "that", "every", "one"),
    "noun": tuple(
        "cat dog bird horse fox wolf bear rabbit farmer teacher doctor sailor soldier painter "
        "writer singer child king queen student pilot baker miner hunter merchant priest judge "
        "captain engineer poet dancer boat train bridge tower castle lamp letter book song map "
        "coin sword ship wagon garden window door key clock drum basket bell chair table "
        "picture statue blanket kettle ladder".split()
    ),
    "place": tuple(
        "river mountain city village forest harbour market valley island desert lake road "
        "station school church temple palace field meadow coast bay hill cave farm library "
        "museum square stadium mill bakery".split()
    ),
    "adjective": tuple(
        "small big old young red blue green white black tall quiet busy distant ancient "
        "northern southern wooden golden narrow wide heavy empty famous hidden local royal "
        "silent rusty dusty modern tiny huge round stone iron silver wild strange early".split()
    ),
    "positive": tuple(
        "good great wonderful brilliant charming delightful pleasant lovely beautiful "
        "excellent clever kind gentle cheerful brave graceful splendid superb joyful "
        "elegant".split()
    ),
    "negative": tuple(
        "bad awful terrible dull boring ugly cruel nasty dreadful poor weak gloomy rude "
        "bitter clumsy lazy miserable horrible tedious grim".split()
    ),
    "verb": tuple(
        "saw found followed carried painted visited watched built opened closed chased helped "
        "called sold bought lifted pushed pulled greeted praised admired crossed guarded met "
        "moved noticed owned described remembered studied cleaned repaired borrowed "
        "delivered fed protected hid dropped caught".split()
    ),
    "adverb": tuple(
        "quickly slowly quietly suddenly often rarely carefully happily gladly finally "
        "soon also still again eagerly".split()
    ),
    "preposition": ("near", "under", "behind", "beside", "above", "inside", "across", "past"),
    "conjunction": ("and", "but", "because", "while", "so"),
    "negation": ("never",),
    "question": ("which",),
}
NAMES = tuple(
    "Arden Belmont Calloway Dunmore Everly Fairhaven Glenwood Hartley Ingram Jasper Kendall "
    "Lowell Marlowe Norbury Oakley Pemberton Quinlan Radcliffe Stanton Thornbury".split()
)
SECTIONS = tuple(
    "History Geography Description Background Reception Legacy Construction Culture".split()
)
# GLUE rows use the first words of these classes (and all of the others), so that a few
# hundred training rows see every word often enough to learn from it (the overlap rules).
GLUE_CLASS_SIZES = {"noun": 16, "place": 8, "adjective": 8, "verb": 12, "adverb": 6}
GLUE_WORDS = {c: ws[: GLUE_CLASS_SIZES.get(c, len(ws))] for c, ws in WORDS.items()}
CLASS_OF = {w: c for c, ws in WORDS.items() for w in ws}
CONTENT = ("noun", "place", "adjective", "positive", "negative", "verb")
_LETTER = {
    "determiner": "D",
    "noun": "N",
    "place": "N",
    "adjective": "A",
    "positive": "A",
    "negative": "A",
    "verb": "V",
    "adverb": "R",
    "preposition": "P",
    "conjunction": "C",
}
_CLAUSE = r"DA*NR?VDA*N(?:PDA*N)?"
_GRAMMAR = re.compile(rf"{_CLAUSE}(?:C{_CLAUSE})*")

# ------------------------------------------------------------------ label rules (text -> label)


def words(text: str) -> list[str]:
    """Lower-cased words of a text, punctuation dropped."""
    return re.findall(r"[a-z]+", text.lower())


def content(text: str) -> set[str]:
    return {w for w in words(text) if CLASS_OF.get(w) in CONTENT}


def grammatical(text: str) -> bool:
    """The word classes of ``text`` follow the clause grammar (the cola rule)."""
    tags = "".join(_LETTER.get(CLASS_OF.get(w, ""), "X") for w in words(text))
    return _GRAMMAR.fullmatch(tags) is not None


def sentiment(text: str) -> int:
    """Positive minus negative adjectives (sst2: positive iff > 0)."""
    classes = [CLASS_OF.get(w) for w in words(text)]
    return classes.count("positive") - classes.count("negative")


def jaccard(a: str, b: str) -> float:
    ca, cb = content(a), content(b)
    return len(ca & cb) / max(len(ca | cb), 1)


def entailed(premise: str, hypothesis: str) -> bool:
    """Every content word of the hypothesis is in the premise (rte, wnli, qnli)."""
    return content(hypothesis) <= content(premise)


def nli(premise: str, hypothesis: str) -> int:
    """mnli: 0 entailment, 1 neutral (a new content word), 2 contradiction (negated)."""
    if not entailed(premise, hypothesis):
        return 1
    return 2 if "never" in words(hypothesis) else 0


LABEL_RULES: dict[str, Callable[..., float | int]] = {
    "cola": lambda s: int(grammatical(s)),
    "sst2": lambda s: int(sentiment(s) > 0),
    "mrpc": lambda a, b: int(jaccard(a, b) >= 0.5),
    "qqp": lambda a, b: int(jaccard(a, b) >= 0.5),
    "stsb": lambda a, b: round(5.0 * jaccard(a, b), 2),
    "mnli": nli,
    "qnli": lambda question, sentence: 0 if entailed(sentence, question) else 1,
    "rte": lambda a, b: 0 if entailed(a, b) else 1,
    "wnli": lambda a, b: 1 if entailed(a, b) else 0,
}


# --------------------------------------------------------------------------------- sentences


class Writer:
    """Seeded words, phrases and clauses from a vocabulary (``WORDS`` or a subset of it)."""

    def __init__(self, rng: np.random.Generator, vocab: dict[str, tuple[str, ...]]) -> None:
        self.rng = rng
        self.vocab = vocab

    def pick(self, cls: str, avoid: set[str] | frozenset = frozenset()) -> str:
        options = [w for w in self.vocab[cls] if w not in avoid] if avoid else self.vocab[cls]
        return options[int(self.rng.integers(len(options)))]

    def phrase(self, head: str) -> list[str]:
        """[determiner, (neutral adjective), noun]."""
        adjective = [self.pick("adjective")] if self.rng.random() < 0.4 else []
        return [self.pick("determiner"), *adjective, head]

    def clause(self, place: float = 0.5) -> list[list[str]]:
        """Phrases [subject, (adverb) verb, object, (preposition, place)]."""
        verb = [self.pick("verb")]
        if self.rng.random() < 0.25:
            verb.insert(0, self.pick("adverb"))
        parts = [self.phrase(self.pick("noun")), verb, self.phrase(self.pick("noun"))]
        if self.rng.random() < place:
            parts.append([self.pick("preposition"), *self.phrase(self.pick("place"))])
        return parts

    def replace(self, tokens: list[str], k: int, avoid: tuple[str, ...] = ()) -> list[str]:
        """``tokens`` with k content words replaced by words of the same class that are in
        neither ``tokens`` nor ``avoid``."""
        out = list(tokens)
        slots = [i for i, w in enumerate(out) if CLASS_OF.get(w) in CONTENT]
        for i in self.rng.permutation(slots)[:k]:
            out[i] = self.pick(CLASS_OF[out[i]], avoid={*out, *tokens, *avoid})
        return out

    def restyle(self, tokens: list[str]) -> list[str]:
        """Other determiners, fewer adverbs: a paraphrase's surface changes."""
        out = [self.pick("determiner") if CLASS_OF.get(w) == "determiner" else w for w in tokens]
        return [w for w in out if CLASS_OF.get(w) != "adverb" or self.rng.random() < 0.5]


def flat(parts: list[list[str]]) -> list[str]:
    return [w for p in parts for w in p]


def sentence(tokens: list[str], end: str = ".") -> str:
    """'The old dog saw the boat.' (GLUE); WikiText passes end ' .'."""
    text = " ".join(tokens)
    return text[0].upper() + text[1:] + end


def question(tokens: list[str]) -> str:
    """'Which old dog saw the boat?': the first determiner becomes a question word."""
    return sentence(["which", *tokens[1:]], "?")


# ------------------------------------------------------------------------- GLUE row builders
# Each takes (writer, target label, genre) and returns the row's texts; the label is then
# computed from the texts by LABEL_RULES, so the targets only balance the classes.


def _cola(w: Writer, target: int, genre: str) -> tuple[str, ...]:
    tokens = flat(w.clause())
    if target == 1:
        return (sentence(tokens),)
    for _ in range(20):
        shuffled = [tokens[i] for i in w.rng.permutation(len(tokens))]
        if not grammatical(" ".join(shuffled)):
            break
    return (sentence(shuffled),)


def _sst2(w: Writer, target: int, genre: str) -> tuple[str, ...]:
    """More adjectives of the target polarity than of the other, on the clause's nouns."""
    parts = w.clause(place=0.7)
    nouns = [p for p in parts if CLASS_OF.get(p[-1]) in ("noun", "place")]
    major = int(w.rng.integers(1, len(nouns) + 1))
    minor = int(w.rng.integers(0, min(major - 1, len(nouns) - major) + 1))
    polarity, other = ("negative", "positive")[target], ("positive", "negative")[target]
    kinds = [polarity] * major + [other] * minor + [""] * (len(nouns) - major - minor)
    for phrase, kind in zip(nouns, w.rng.permutation(kinds), strict=True):
        start = 1 if CLASS_OF[phrase[0]] == "determiner" else 2  # after "near the"
        phrase[start:-1] = [w.pick(kind)] if kind else []
    return (sentence(flat(parts)),)


def _paraphrase(w: Writer, target: int, genre: str, ask: bool = False) -> tuple[str, ...]:
    """s2 = s1 with 0-1 (target 1) or more than half (target 0) content words replaced."""
    tokens = flat(w.clause(place=0.8))
    n = sum(CLASS_OF.get(t) in CONTENT for t in tokens)
    k = int(w.rng.integers(0, 2)) if target == 1 else int(w.rng.integers(n // 2 + 1, n + 1))
    other = w.restyle(w.replace(tokens, k))
    if ask:
        return question(tokens), question(other)
    return sentence(tokens), sentence(other)


def _stsb(w: Writer, target: int, genre: str) -> tuple[str, ...]:
    """s2 = s1 with about (target / 5) of its content words replaced."""
    tokens = flat(w.clause(place=0.8))
    n = sum(CLASS_OF.get(t) in CONTENT for t in tokens)
    k = int(round(target / 5 * n))
    return sentence(tokens), sentence(w.restyle(w.replace(tokens, k)))


def _premise(w: Writer, genre: str) -> tuple[list[list[str]], str]:
    parts = w.clause()
    tokens = flat(parts)
    if genre == "mismatched":  # two clauses: another "genre" (mnli mismatched, wnli)
        tokens += [w.pick("conjunction"), *flat(w.clause(place=0.0))]
    return parts, sentence(tokens)


def _hypothesis(w: Writer, parts: list[list[str]], premise: str, new: bool) -> list[str]:
    """[det, (adjective), noun, verb, det, noun] from a clause's subject, verb and object;
    with ``new`` two of its content words are ones the premise lacks."""
    subject, verb, obj = parts[0], parts[1][-1:], parts[2]
    keep = [subject[0], *subject[1:-1][: int(w.rng.random() < 0.3)], subject[-1]]
    tokens = [*keep, *verb, obj[0], obj[-1]]
    return w.replace(tokens, 2, avoid=tuple(words(premise))) if new else tokens


def _rte(w: Writer, target: int, genre: str, entail_label: int = 0) -> tuple[str, ...]:
    parts, premise = _premise(w, genre)
    return premise, sentence(_hypothesis(w, parts, premise, new=target != entail_label))


def _wnli(w: Writer, target: int, genre: str) -> tuple[str, ...]:
    return _rte(w, target, "mismatched", entail_label=1)


def _qnli(w: Writer, target: int, genre: str) -> tuple[str, ...]:
    parts, text = _premise(w, genre)
    return question(_hypothesis(w, parts, text, new=target == 1)), text


def _mnli(w: Writer, target: int, genre: str) -> tuple[str, ...]:
    parts, premise = _premise(w, genre)
    hypothesis = _hypothesis(w, parts, premise, new=target == 1)
    if target == 2 or (target == 1 and w.rng.random() < 0.3):
        hypothesis.insert(-3, "never")  # before the verb
    return premise, sentence(hypothesis)


ROWS: dict[str, Callable[[Writer, int, str], tuple[str, ...]]] = {
    "cola": _cola,
    "sst2": _sst2,
    "mrpc": _paraphrase,
    "qqp": lambda w, target, genre: _paraphrase(w, target, genre, ask=True),
    "stsb": _stsb,
    "mnli": _mnli,
    "qnli": _qnli,
    "rte": _rte,
    "wnli": _wnli,
}


def _wikitext_sentence(w: Writer) -> str:
    """WikiText style: spaced punctuation, 'In 1854 , Arden painted the old boat .'"""
    parts = w.clause()
    if w.rng.random() < 0.2:
        parts[0] = [NAMES[int(w.rng.integers(len(NAMES)))]]  # a name as the subject
    tokens = flat(parts)
    if w.rng.random() < 0.25:
        tokens += [",", w.pick("conjunction"), *flat(w.clause(place=0.3))]
    if w.rng.random() < 0.2:
        tokens = ["in", str(int(w.rng.integers(1800, 2000))), ",", *tokens]
    return sentence(tokens, " .")


def wikitext_lines(paragraphs: int, rng: np.random.Generator) -> list[str]:
    """WikiText's raw rows: headings, blank rows, paragraphs (' ... \\n')."""
    w = Writer(rng, WORDS)
    lines: list[str] = [""]
    written = 0
    while written < paragraphs:
        title = f"{NAMES[int(rng.integers(len(NAMES)))]} {w.pick('place').capitalize()}"
        lines += [f" = {title} = \n", ""]
        for j in range(int(rng.integers(4, 11))):
            if j and rng.random() < 0.35:
                lines += [f" = = {SECTIONS[int(rng.integers(len(SECTIONS)))]} = = \n", ""]
            body = " ".join(_wikitext_sentence(w) for _ in range(int(rng.integers(2, 7))))
            lines += [f" {body} \n", ""]
            written += 1
            if written == paragraphs:
                break
    return lines
