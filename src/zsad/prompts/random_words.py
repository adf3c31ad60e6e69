"""Random-word prompts (RWDA): labelled normal/anomalous sentences padded with random words, for a text-only classifier.

Tamura (BMVC 2023) trains a small classifier on CLIP text embeddings of prompts in which random words surround the
state words, so the classifier must rely on the state and not on the rest of the sentence. Details the paper leaves
open are options of ``RandomWordOptions``. Words come from two offline sources: random lowercase strings, and the
whole-word tokens of CLIP's own BPE vocabulary (shipped with open_clip), so real and nonsense words both appear.

Each *pair* shares template, object, random words and their positions; only the state differs (one normal, one
anomalous), so the two sentences differ exactly in what the label depends on.
"""

from __future__ import annotations

import functools
import gzip
import random
import re
from dataclasses import dataclass
from importlib import resources

from zsad.errors import ZsadInputError
from zsad.prompts.ensemble import PromptSet, get_prompt_set

GENERIC_OBJECTS = ("object", "product", "item", "thing", "part", "sample")
WORD_SOURCES = ("chars", "vocab", "mixed")
POSITIONS = ("prefix", "suffix", "inside", "any")


@dataclass(frozen=True)
class RandomWordOptions:
    """How the random-word training prompts are drawn; the same options and seed give the same sentences."""

    n_pairs: int = 10_000  # N_p: normal/anomalous sentence pairs (the paper's best is about 10k)
    min_words: int = 1  # random words per sentence, drawn uniformly in [min_words, max_words]
    max_words: int = 3
    word_source: str = "mixed"  # chars (random strings) | vocab (CLIP BPE words) | mixed (each word either)
    positions: str = "any"  # where random words go: prefix | suffix | inside (between words) | any (each word)
    prompt_set: str = "winclip"  # state phrases and templates
    objects: tuple[str, ...] = GENERIC_OBJECTS  # object names (known-object mode: the class names)
    random_object_rate: float = 0.25  # fraction of pairs whose object is a random word (unknown object)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_pairs < 1:
            raise ZsadInputError(f"random words: n_pairs must be >= 1, got {self.n_pairs}")
        if not 0 <= self.min_words <= self.max_words:
            raise ZsadInputError(
                f"random words: need 0 <= min_words <= max_words, got {self.min_words}, {self.max_words}"
            )
        if self.word_source not in WORD_SOURCES:
            raise ZsadInputError(f"random words: word_source {self.word_source!r}: use {', '.join(WORD_SOURCES)}")
        if self.positions not in POSITIONS:
            raise ZsadInputError(f"random words: positions {self.positions!r}: use {', '.join(POSITIONS)}")
        if not 0 <= self.random_object_rate <= 1:
            raise ZsadInputError("random words: random_object_rate must be in [0, 1]")
        if not self.objects and self.random_object_rate < 1:
            raise ZsadInputError("random words: give objects or set random_object_rate to 1")


@functools.cache
def vocabulary_words(min_len: int = 3, max_len: int = 12) -> tuple[str, ...]:
    """Whole-word tokens of CLIP's BPE vocabulary (about 30k at 3..12 letters): an offline source of real words."""
    path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    with path.open("rb") as f:
        merges = gzip.decompress(f.read()).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    pattern = re.compile(f"[a-z]{{{min_len},{max_len}}}")
    words = (m.replace(" ", "")[:-4] for m in merges if m.endswith("</w>"))
    return tuple(dict.fromkeys(w for w in words if pattern.fullmatch(w)))


def _random_string(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 10)))


def _word(rng: random.Random, source: str) -> str:
    if source == "mixed":
        source = rng.choice(("chars", "vocab"))
    return _random_string(rng) if source == "chars" else rng.choice(vocabulary_words())


def _insert(words: list[str], extra: list[tuple[str, str, float]]) -> list[str]:
    """Place each (word, where, u): prefix, suffix, or inside at the relative position u of the current sentence."""
    out = list(words)
    for w, where, u in extra:
        if where == "prefix":
            out.insert(0, w)
        elif where == "suffix":
            out.append(w)
        else:
            out.insert(1 + int(u * max(1, len(out) - 1)), w)
    return out


def random_word_prompts(opts: RandomWordOptions) -> tuple[list[str], list[int]]:
    """2 * n_pairs sentences, pair by pair (normal first), and their labels (0 normal, 1 anomalous)."""
    ps: PromptSet = get_prompt_set(opts.prompt_set)
    rng = random.Random(opts.seed)
    sentences: list[str] = []
    labels: list[int] = []
    for _ in range(opts.n_pairs):
        template = rng.choice(ps.templates)
        obj = (
            _word(rng, opts.word_source)
            if not opts.objects or rng.random() < opts.random_object_rate
            else rng.choice(opts.objects)
        )
        places = ("prefix", "suffix", "inside")
        extra = [
            (
                _word(rng, opts.word_source),
                rng.choice(places) if opts.positions == "any" else opts.positions,
                rng.random(),
            )
            for _ in range(rng.randint(opts.min_words, opts.max_words))
        ]
        states = (rng.choice(ps.normal_states), rng.choice(ps.anomalous_states))
        for label, state in enumerate(states):  # same words at the same relative places: only the state differs
            words = template.format(state.format(obj)).rstrip(".").split()
            sentences.append(" ".join(_insert(words, extra)) + ".")
            labels.append(label)
    return sentences, labels
