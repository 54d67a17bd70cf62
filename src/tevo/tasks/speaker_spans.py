"""Nested spans in Shakespeare's speech headings: a span-extraction task from the embedded corpus.

A speech heading is a line of capitals ending in a full stop, on its own line after a blank line
and followed by the speech (``\\n\\nKING RICHARD.\\nNorfolk, for thee …``); lines starting with
ACT or SCENE are not headings. Every heading gives spans of three types, as (type, start, end)
character offsets with ``end`` inclusive:
- ``speaker``: the whole heading without its full stop ("KING RICHARD");
- ``title``: its first word when that is a title from ``TITLES`` and more words follow ("KING");
- ``name``: the heading without the title (and without a following "OF": "DUKE OF YORK" gives
  the name "YORK"), so "KING RICHARD" ⊃ "KING", "RICHARD": spans nest.
Each work is cut into consecutive non-overlapping passages of ``chars`` characters (128; the
remainder is dropped); a passage keeps the spans that lie wholly inside it. Works are split
WHOLE between train, validation and test (no work in two splits), as the corpus does.
"""
from __future__ import annotations

import re

from ..errors import ConfigError
from ..registry import TASKS

TYPES = ("speaker", "title", "name")
TITLES = ("KING", "QUEEN", "PRINCE", "PRINCESS", "DUKE", "DUCHESS", "LORD", "LADY", "EARL",
          "COUNT", "COUNTESS", "SIR", "CARDINAL", "BISHOP", "ARCHBISHOP", "MISTRESS", "FRIAR")
# held-out works: each with titled speakers (Lady Macbeth, King Richard, Duke Orsino's play …)
VAL_WORKS = ("macbeth_gut", "twelfth_night_gut")
TEST_WORKS = ("richard_ii_gut", "tempest_gut")
HEADING = re.compile(r"(?:^|\n\n)([A-Z][A-Z'\- ]*[A-Z])\.\n(?=\S)")


def heading_spans(text: str) -> list[tuple[int, int, int]]:
    """(type, start, end) of every heading span in ``text`` (end inclusive), in text order."""
    out = []
    for m in HEADING.finditer(text):
        words = m.group(1).split(" ")
        if words[0] in ("ACT", "SCENE"):
            continue
        a, b = m.start(1), m.end(1) - 1
        out.append((0, a, b))
        if words[0] in TITLES and len(words) > 1 and words[1]:
            out.append((1, a, a + len(words[0]) - 1))
            skip = len(words[0]) + 1
            if words[1] == "OF" and len(words) > 2:
                skip += 3
            out.append((2, a + skip, b))
    return out


@TASKS.register(
    "speaker_spans",
    paper="The works of William Shakespeare (Project Gutenberg): speech headings as nested "
          "spans (speaker ⊃ title, name)",
    equation="passage of 128 characters → {(type, start, end)}: speaker, title, name spans of "
             "the speech headings; splits by whole works",
    complexity=("", ""),
    test="tests/papers/test_models_global_pointer.py::test_task_labels_a_hand_checked_passage")
class SpeakerSpansTask:
    """Speaker / title / name spans of the speech headings in 128-character passages."""

    formats = ("spans",)
    labels = TYPES

    def __init__(self, chars: int = 128, val_works=VAL_WORKS, test_works=TEST_WORKS):
        if not isinstance(chars, int) or isinstance(chars, bool) or chars < 16:
            raise ConfigError("task.speaker_spans.chars", chars, why="must be an integer >= 16")
        self.chars = chars
        self.val_works, self.test_works = tuple(val_works), tuple(test_works)
        if set(self.val_works) & set(self.test_works):
            raise ConfigError("task.speaker_spans.test_works",
                              sorted(set(self.val_works) & set(self.test_works)),
                              why="a work cannot be both validation and test")
        self._splits = None

    @property
    def num_types(self) -> int:
        return len(TYPES)

    def split_of(self, work: str) -> str:
        return "val" if work in self.val_works else "test" if work in self.test_works \
            else "train"

    def splits(self) -> dict[str, list[tuple[str, list[tuple[int, int, int]], str]]]:
        """{split: [(passage, [(type, start, end), …], work), …]} in work order; offsets are
        relative to the passage."""
        if self._splits is None:
            from ..data.corpora import shakespeare_works
            works = shakespeare_works()
            keys = {k for k, _, _ in works}
            for w in self.val_works + self.test_works:
                if w not in keys:
                    raise ConfigError("task.speaker_spans.works", w, sorted(keys),
                                      why=f"unknown work {w!r}")
            out = {"train": [], "val": [], "test": []}
            c = self.chars
            for key, _title, text in works:
                spans = heading_spans(text)
                rows = [(text[i:i + c], [], key) for i in range(0, len(text) - c + 1, c)]
                for t, a, b in spans:
                    r = a // c
                    if r < len(rows) and b // c == r:         # wholly inside one passage
                        rows[r][1].append((t, a - r * c, b - r * c))
                out[self.split_of(key)].extend(rows)
            self._splits = out
        return self._splits
