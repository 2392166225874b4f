"""Text <-> class indices for the split the models were trained on, plus the space.

EMNIST's balanced and bymerge splits merge the lower- and uppercase forms of letters that look
alike when handwritten (c, i, j, k, l, m, o, p, s, u, v, w, x, y, z): those are case-folded to the
class the split keeps, and decryption returns that class's character. A space is not a class: it
travels as an encrypted flag, and its latent slot carries a decoy character (see codec.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPACE = " "


class AlphabetError(ValueError):
    """A character the models cannot carry; the message lists the alphabet."""


@dataclass(frozen=True)
class EncodedText:
    class_index: np.ndarray  # (N,) int64; -1 where the character is a space
    is_space: np.ndarray  # (N,) bool


@dataclass(frozen=True)
class Alphabet:
    """The characters a set of models can carry: its classes, their case-folded forms, and space."""

    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes) or SPACE in self.classes:
            raise ValueError(f"classes must be distinct characters without space, got {''.join(self.classes)!r}")

    @property
    def lookup(self) -> dict[str, int]:
        table = {char: index for index, char in enumerate(self.classes)}
        for char, index in list(table.items()):
            # Case folding where the split keeps only one form of a letter.
            for other in (char.lower(), char.upper()):
                table.setdefault(other, index)
        return table

    def describe(self) -> str:
        return f"{''.join(self.classes)} and space (other letter cases fold onto these where the split merges them)"

    def encode(self, text: str, replace: str | None = None) -> EncodedText:
        """Map text to class indices.

        Args:
            text: the message.
            replace: a character of the alphabet to put in place of unsupported ones; None
                refuses them.
        Raises:
            AlphabetError: naming the unsupported characters and listing the alphabet.
        """
        lookup = self.lookup
        if replace is not None and replace not in lookup:
            raise AlphabetError(f"replacement {replace!r} is not in the alphabet: {self.describe()}")
        unsupported = sorted({c for c in text if c != SPACE and c not in lookup})
        if unsupported and replace is None:
            raise AlphabetError(f"unsupported characters {''.join(unsupported)!r}; the alphabet is {self.describe()}")
        is_space = np.array([c == SPACE for c in text], dtype=bool)
        class_index = np.array(
            [-1 if c == SPACE else lookup.get(c, lookup.get(replace, -1)) for c in text], dtype=np.int64
        )
        return EncodedText(class_index, is_space)

    def decode(self, class_index: np.ndarray, is_space: np.ndarray) -> str:
        """Class indices (and space flags) back to text."""
        return "".join(SPACE if space else self.classes[i] for i, space in zip(class_index.tolist(), is_space.tolist()))
