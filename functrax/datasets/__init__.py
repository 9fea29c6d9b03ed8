"""Small real data sets shipped with functrax, for the examples and tests (never downloaded).

``load_digits()``
    The 8x8 handwritten digits: 1797 grey-scale images of the digits 0-9, the test set of the UCI
    Machine Learning Repository's "Optical Recognition of Handwritten Digits" data set (E. Alpaydin
    and C. Kaynak, 1998), as distributed with scikit-learn (``sklearn/datasets/data/digits.csv.gz``,
    BSD 3-Clause licence; the UCI repository lists the data under CC BY 4.0). It is stored here
    decompressed, in scikit-learn's format, as ``digits.csv``: one sample per line, 64 integer pixel
    values in 0..16 (row-major 8x8) and then the integer label, comma-separated, no header. The full
    attribution and licence text are in ``LICENSE-digits.txt`` beside this file.

``load_text()``
    ``tiny_corpus.txt``: a few KB of public-domain English (nursery rhymes, verses, proverbs and a
    short prose passage) for the character-level RNN language-model example.
"""

from __future__ import annotations

import functools
import os

import numpy as np

__all__ = ["load_digits", "load_text", "DATA_DIR"]

#: The folder holding the data files (``digits.csv``, ``tiny_corpus.txt``).
DATA_DIR = os.path.dirname(os.path.abspath(__file__))

_N_DIGITS = 1797


@functools.lru_cache(maxsize=1)
def _read_digits_csv() -> np.ndarray:
    path = os.path.join(DATA_DIR, "digits.csv")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.shape != (_N_DIGITS, 65):
        raise ValueError(f"{path}: expected a {_N_DIGITS}x65 table, found shape {table.shape}")
    table.flags.writeable = False
    return table


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Load the 8x8 handwritten digits (UCI, via scikit-learn; see the module docstring).

    Returns:
      ``(images, labels)``: ``images`` is a float64 array of shape ``(1797, 8, 8)`` with the pixel
      intensities scaled from 0..16 to ``[0, 1]``; ``labels`` is an int64 array of shape
      ``(1797,)`` with values 0..9. Both are fresh arrays the caller may modify.

    Example::

      images, labels = load_digits()
      x = images.reshape(len(images), 64)      # flat features for an MLP
      x = images[..., None]                    # NHWC for a ConvNet
    """
    table = _read_digits_csv()
    images = table[:, :64].reshape(_N_DIGITS, 8, 8).astype(np.float64) / 16.0
    labels = table[:, 64].copy()
    return images, labels


def load_text() -> str:
    """Return the small public-domain English corpus (``tiny_corpus.txt``, about 4 KB) as a string."""
    with open(os.path.join(DATA_DIR, "tiny_corpus.txt"), encoding="utf-8") as f:
        return f.read()
