"""Real EPIC-KITCHENS-100 captions restricted to a drawable class subset.

The synthetic sample renders real annotation rows, so its captions keep the real vocabulary, the
real verb-noun co-occurrences and the real repetition of narrations. Only rows whose verb class and
every noun class fall inside the subset (the most frequent classes of the retrieval test split)
can be drawn faithfully, so only those are used.
"""

from __future__ import annotations

import ast
import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from eva02at.core.config import ConfigError
from eva02at.core.errors import BadInput, MissingInput
from eva02at.data.annotations import parse_class_list

TEST_CSV = "EPIC_100_retrieval_test.csv"
TRAIN_SENTENCE_CSV = "EPIC_100_retrieval_train_sentence.csv"
VERB_CLASSES_CSV = "EPIC_100_verb_classes.csv"
NOUN_CLASSES_CSV = "EPIC_100_noun_classes.csv"
ADVERBS = frozenset({"still", "partially", "then", "also", "again", "just", "slowly", "quickly"})
IRREGULAR = {"have": "has", "be": "is", "do": "does", "go": "goes"}


@dataclass(frozen=True)
class Caption:
    """A narration with its EPIC-KITCHENS labels; the first noun is the main (moving) object."""

    narration: str
    verb: str
    verb_class: int
    nouns: tuple[str, ...]
    noun_classes: tuple[int, ...]


@dataclass(frozen=True)
class ClassSubset:
    """The drawable classes, most frequent first: class id -> class key."""

    verbs: dict[int, str]
    nouns: dict[int, str]

    def admits(self, caption: Caption) -> bool:
        """Whether every class of ``caption`` can be drawn."""
        return caption.verb_class in self.verbs and all(n in self.nouns for n in caption.noun_classes)


def class_subset(folder: str | os.PathLike, verbs: int, nouns: int) -> ClassSubset:
    """The ``verbs`` most frequent verb classes and ``nouns`` most frequent noun classes of the test split.

    Frequencies count the test CSV's rows (``verb_class`` and the main ``noun_class``); ties go to
    the smaller class id, so the subset is fixed by the data alone.
    """
    folder = Path(folder)
    rows = list(_read(folder / TEST_CSV, ("verb_class", "noun_class")))
    verb_counts = Counter(_int(row["verb_class"], folder / TEST_CSV, line) for line, row in rows)
    noun_counts = Counter(_int(row["noun_class"], folder / TEST_CSV, line) for line, row in rows)
    verb_keys, noun_keys = _class_keys(folder / VERB_CLASSES_CSV), _class_keys(folder / NOUN_CLASSES_CSV)
    top_verbs = sorted(verb_counts, key=lambda c: (-verb_counts[c], c))[:verbs]
    top_nouns = sorted(noun_counts, key=lambda c: (-noun_counts[c], c))[:nouns]
    for kind, wanted, found in (("verb", verbs, top_verbs), ("noun", nouns, top_nouns)):
        if len(found) < wanted:
            raise ConfigError(f"{folder / TEST_CSV}: only {len(found)} {kind} classes, {wanted} requested")
    for keys, found, path in (
        (verb_keys, top_verbs, VERB_CLASSES_CSV),
        (noun_keys, top_nouns, NOUN_CLASSES_CSV),
    ):
        unknown = [c for c in found if c not in keys]
        if unknown:
            raise BadInput(f"{folder / path}: class id(s) {unknown} of {TEST_CSV} are not listed")
    return ClassSubset({c: verb_keys[c] for c in top_verbs}, {c: noun_keys[c] for c in top_nouns})


def test_captions(folder: str | os.PathLike, subset: ClassSubset) -> list[Caption]:
    """Drawable rows of the test split's video CSV, in file order."""
    path = Path(folder) / TEST_CSV
    columns = ("narration", "verb", "verb_class", "all_nouns", "all_noun_classes")
    captions = [
        _caption(path, line, row, row["all_nouns"], row["all_noun_classes"]) for line, row in _read(path, columns)
    ]
    return [c for c in captions if subset.admits(c)]


def train_captions(folder: str | os.PathLike, subset: ClassSubset) -> list[Caption]:
    """Drawable sentences of the train split (one per distinct narration), in file order."""
    path = Path(folder) / TRAIN_SENTENCE_CSV
    columns = ("narration", "verb", "verb_class", "nouns", "noun_classes")
    captions = [_caption(path, line, row, row["nouns"], row["noun_classes"]) for line, row in _read(path, columns)]
    return [c for c in captions if subset.admits(c)]


def third_person(narration: str) -> str:
    """The narration as Ego4D writes it: ``"#C C takes plate"`` for ``"take plate"``."""
    return f"#C C {present_tense(narration)}".rstrip()


def present_tense(narration: str) -> str:
    """An imperative narration in the third person present: ``"put down plate"`` -> ``"puts down plate"``.

    A leading gerund (``"washing plate"``) becomes ``"is washing plate"``, and an opening adverb
    (``"still"``) is skipped over.
    """
    words = narration.split()
    if not words:
        return ""
    first = 1 if len(words) > 1 and words[0] in ADVERBS else 0
    if words[first].endswith("ing") and len(words[first]) > 4:
        words.insert(0, "is")
    else:
        words[first] = _third_person_verb(words[first])
    return " ".join(words)


def class_name(key: str) -> str:
    """A class key in words: ``"turn-on"`` -> ``"turn on"``, ``"board:chopping"`` -> ``"chopping board"``."""
    return " ".join(reversed(key.split(":"))).replace("-", " ")


def _third_person_verb(word: str) -> str:
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word.endswith("s") and not word.endswith("ss"):  # already conjugated (or not a verb)
        return word
    if word.endswith(("s", "sh", "ch", "x", "z", "o")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _caption(path: Path, line: int, row: dict[str, str], nouns: str, classes: str) -> Caption:
    """One caption from a CSV row; a malformed row raises naming the file and line."""
    try:
        noun_list = _string_list(nouns)
        class_list = parse_class_list(classes)
    except (ValueError, SyntaxError) as err:
        raise BadInput(f"{path}:{line}: {err}") from err
    if not class_list or len(noun_list) != len(class_list):
        raise BadInput(f"{path}:{line}: nouns {nouns!r} do not match noun classes {classes!r}")
    verb_class = _int(row["verb_class"], path, line)
    return Caption(row["narration"], row["verb"], verb_class, tuple(noun_list), tuple(class_list))


def _string_list(value: str) -> list[str]:
    """``"['plate', 'tap']"`` -> ``['plate', 'tap']``, as the EPIC-KITCHENS CSVs store noun lists."""
    items = ast.literal_eval(value)
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"bad noun list {value!r}")
    return items


def _class_keys(path: Path) -> dict[int, str]:
    return {_int(row["id"], path, line): row["key"] for line, row in _read(path, ("id", "key"))}


def _int(value: str, path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"{path}:{line}: {value!r} is not a class id") from None


def _read(path: Path, columns: tuple[str, ...]):
    """Yield (line, row) of a CSV file, after checking that ``columns`` exist."""
    if not path.is_file():
        raise MissingInput(f"{path}: annotation file not found")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise BadInput(f"{path}: missing column(s) {missing}")
        for row in reader:
            yield reader.line_num, row
