"""scikit-learn's bundled 8×8 handwritten digits: 1797 images, no files needed."""

from __future__ import annotations

import numpy as np

from slstm.data.splits import RawData

# The first 1500 images train and the last 297 test: a split by position, the
# same in every run whatever the seed.
TRAIN_SIZE = 1500
DIGITS_CLASSES = [str(d) for d in range(10)]


def read_digits() -> RawData:
    """Return the digits as float32 images ``(N, 1, 8, 8)`` in ``[0, 1]``.

    The pixel values 0..16 of scikit-learn's copy are divided by 16.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    return RawData(
        train_images=images[:TRAIN_SIZE],
        train_labels=labels[:TRAIN_SIZE],
        test_images=images[TRAIN_SIZE:],
        test_labels=labels[TRAIN_SIZE:],
        class_names=list(DIGITS_CLASSES),
    )
