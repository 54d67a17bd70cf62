"""Genre of a Shakespeare passage: a labelled downstream task from the embedded corpus.

Each of the 42 works in the corpus index (``tevo/data/corpora/shakespeare_works.index.tsv``) is
labelled with its genre, following the First Folio's division of the plays (1623: Comedies,
Histories, Tragedies; Troilus and Cressida and Cymbeline among the tragedies) with the
romances outside the Folio (Pericles) as comedies and the non-dramatic verse as poems. A work
is cut into consecutive non-overlapping passages of ``chars`` characters (256; the remainder is
dropped); a passage's label is its work's genre. Works are split WHOLE between train,
validation and test (no work in two splits), with one held-out work of every genre in each of
validation and test, so accuracy measures the genre, not the memorised play.

Chance is the majority class: ``chance(split)`` gives the accuracy of the best constant answer on
a split (its own most frequent genre), and of always answering the training split's majority.
"""
from __future__ import annotations

from collections import Counter

from ..errors import ConfigError
from ..registry import TASKS

GENRES = ("comedy", "tragedy", "history", "poem")
WORK_GENRE = {
    # Comedies (First Folio), with Pericles (not in the Folio; a romance)
    "alls_well_that_ends_well_gut": "comedy", "as_you_like_it_gut": "comedy",
    "comedy_of_errors_gut": "comedy", "loves_labours_lost_gut": "comedy",
    "measure_for_measure_gut": "comedy", "merchant_of_venice_gut": "comedy",
    "merry_wives_of_windsor_gut": "comedy", "midsummer_nights_dream_gut": "comedy",
    "much_ado_about_nothing_gut": "comedy", "taming_of_the_shrew_gut": "comedy",
    "tempest_gut": "comedy", "twelfth_night_gut": "comedy",
    "two_gentlemen_of_verona_gut": "comedy", "winters_tale_gut": "comedy",
    "pericles_gut": "comedy",
    # Histories
    "john_gut": "history", "richard_ii_gut": "history", "henry_iv_part_1_gut": "history",
    "henry_iv_part_2_gut": "history", "henry_v_gut": "history",
    "henry_vi_part_1_gut": "history", "henry_vi_part_2_gut": "history",
    "henry_vi_part_3_gut": "history", "richard_iii_gut": "history",
    "henry_viii_gut": "history",
    # Tragedies
    "troilus_and_cressida_gut": "tragedy", "coriolanus_gut": "tragedy",
    "tragedy_of_titus_andronicus_gut": "tragedy", "romeo_and_juliet_gut": "tragedy",
    "timon_of_athens_gut": "tragedy", "julius_caesar_gut": "tragedy",
    "macbeth_gut": "tragedy", "hamlet_gut": "tragedy", "lear_gut": "tragedy",
    "othello_gut": "tragedy", "antony_and_cleopatra_gut": "tragedy", "cymbeline_gut": "tragedy",
    # Poems
    "sonnets_gut": "poem", "rape_of_lucrece_gut": "poem", "lovers_complaint_gut": "poem",
    "passionate_pilgrim_gut": "poem", "phoenix_and_the_turtle_gut": "poem",
}
# one work of each genre per held-out split
VAL_WORKS = ("macbeth_gut", "twelfth_night_gut", "richard_ii_gut", "lovers_complaint_gut")
TEST_WORKS = ("julius_caesar_gut", "tempest_gut", "henry_v_gut", "rape_of_lucrece_gut")


@TASKS.register(
    "genre", paper="The works of William Shakespeare (Project Gutenberg); genres of the First "
                   "Folio (1623)",
    equation="passage of 256 characters → comedy | tragedy | history | poem; splits by whole "
             "works; chance = majority class",
    complexity=("", ""),
    test="tests/test_genre.py::test_genre_passages_labels_and_whole_work_splits")
class GenreTask:
    """Which genre a 256-character Shakespeare passage comes from (splits by whole works)."""

    formats = ("classify",)
    needs_tokenizer = True                # a text task: the run's tokenizer encodes it
    labels = GENRES

    def __init__(self, chars: int = 256, val_works=VAL_WORKS, test_works=TEST_WORKS):
        if not isinstance(chars, int) or isinstance(chars, bool) or chars < 8:
            raise ConfigError("task.genre.chars", chars, why="must be an integer >= 8")
        self.chars = chars
        self.val_works, self.test_works = tuple(val_works), tuple(test_works)
        for w in self.val_works + self.test_works:
            if w not in WORK_GENRE:
                raise ConfigError("task.genre.works", w, sorted(WORK_GENRE),
                                  why=f"unknown work {w!r}")
        if set(self.val_works) & set(self.test_works):
            raise ConfigError("task.genre.test_works", sorted(set(self.val_works)
                                                              & set(self.test_works)),
                              why="a work cannot be both validation and test")
        self._splits = None

    @property
    def num_classes(self) -> int:
        return len(GENRES)

    def split_of(self, work: str) -> str:
        return "val" if work in self.val_works else "test" if work in self.test_works \
            else "train"

    def splits(self) -> dict[str, list[tuple[str, int, str]]]:
        """{split: [(passage, label, work), …]} in work order."""
        if self._splits is None:
            from ..data.corpora import shakespeare_works
            out = {"train": [], "val": [], "test": []}
            for key, _title, text in shakespeare_works():
                label = GENRES.index(WORK_GENRE[key])
                c = self.chars
                for i in range(0, len(text) - c + 1, c):
                    out[self.split_of(key)].append((text[i:i + c], label, key))
            self._splits = out
        return self._splits

    def chance(self, split: str = "test") -> dict:
        """The chance levels on ``split``: ``majority`` (the split's most frequent genre and the
        accuracy of always answering it) and ``train_majority`` (the same for the training
        split's most frequent genre, the answer a label-prior classifier gives)."""
        rows = self.splits()[split]
        n = max(len(rows), 1)
        here = Counter(lab for _, lab, _ in rows)
        top = here.most_common(1)[0][0]
        train_top = Counter(lab for _, lab, _ in self.splits()["train"]).most_common(1)[0][0]
        return {"majority_class": GENRES[top], "majority_accuracy": here[top] / n,
                "train_majority_class": GENRES[train_top],
                "train_majority_accuracy": here[train_top] / n, "examples": len(rows)}
