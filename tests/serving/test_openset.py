"""The "I'm not sure" threshold (webapp/serving/openset.py): chosen on a model's few
validation pictures, it must keep at least 95 % of the *new* in-class pictures."""

from __future__ import annotations

import numpy as np

from webapp.serving.openset import KEEP, keeping


def test_a_threshold_from_few_validation_pictures_keeps_95_percent_of_new_ones():
    """A Teach model has tens of validation pictures.  Over many such models (distances
    drawn from one distribution, seeded), the conformal threshold keeps at least 95 % of
    fresh pictures on average; the plain 95 % quantile of the same few keeps fewer."""
    rng = np.random.default_rng(0)
    conformal, plain = [], []
    for _ in range(2000):
        validation, fresh = rng.gamma(4.0, 0.1, 24), rng.gamma(4.0, 0.1, 200)
        conformal.append(np.mean(fresh <= keeping(validation, low_is_known=True,
                                                  conformal=True)))
        plain.append(np.mean(fresh <= keeping(validation, low_is_known=True)))
    assert np.mean(conformal) >= KEEP > np.mean(plain)
    # Fewer than 19 pictures: the largest distance, keeping n / (n + 1) of new ones.
    few = rng.gamma(4.0, 0.1, 6)
    assert keeping(few, low_is_known=True, conformal=True) == few.max()
    # Scores (higher = known) mirror distances.
    scores = -rng.gamma(4.0, 0.1, 12)
    assert keeping(scores, low_is_known=False, conformal=True) == \
        -keeping(-scores, low_is_known=True, conformal=True)
