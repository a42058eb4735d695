"""The "I'm not sure" threshold (webapp/scores.py): chosen on a model's few
validation pictures, it must keep at least 95 % of the *new* in-class pictures."""

from __future__ import annotations

import numpy as np

from webapp.scores import KEEP, keeping


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


def test_a_few_holds_keep_95_percent_of_new_ones_when_training_bursts_are_measured_too():
    """A Teach class of a few holds has one validation hold: four near-copies, so a
    threshold set on the validation pictures alone rests on one viewpoint per class and
    keeps about four new holds in five.  Measuring each training picture against the bank
    without its own hold as well (leave one burst out, ``fit_knn(bursts=...)``) keeps at
    least 95 % (features drawn per hold: a viewpoint, then a small shake per frame; five
    training holds per class; seeded).  Not a guarantee: frames of one hold are not
    independent draws, which split-conformal's promise assumes (docs/openset.md)."""
    from webapp.engines.openset import fit_knn
    from webapp.scores import knn_distance

    rng = np.random.default_rng(1)

    def holds(centre, count, frames=4):
        views = centre + rng.normal(0, 0.6, (count, 1, centre.size))
        shaken = views + rng.normal(0, 0.05, (count, frames, centre.size))
        return shaken.reshape(count * frames, centre.size), np.repeat(np.arange(count), frames)

    val_only, with_bursts = [], []
    for _ in range(200):
        train, bursts, val, fresh = [], [], [], []
        for c, centre in enumerate(rng.normal(0, 1, (3, 32))):
            features, numbers = holds(centre, 5)
            train.append(features)
            bursts.append(numbers + 5 * c)
            val.append(holds(centre, 1)[0])
            fresh.append(holds(centre, 10)[0])
        train, val, fresh = np.vstack(train), np.vstack(val), np.vstack(fresh)
        for kept, criterion in ((val_only, fit_knn(train, val)),
                                (with_bursts, fit_knn(train, val, bursts=np.concatenate(bursts)))):
            distances = knn_distance(criterion["bank"].astype(np.float32), fresh, 1)
            kept.append(np.mean(distances <= criterion["threshold"]))
    assert np.mean(with_bursts) >= KEEP and np.mean(val_only) < 0.85


def test_new_views_of_the_taught_pictures_widen_what_is_known_not_everything():
    """A taught object shown from another side (closer, turned, in another light) lands
    away from every training picture: a threshold set on near-copies calls it unknown.
    With new views of the training pictures in the bank and new views of the validation
    pictures among the distances the threshold is set on (``fit_knn(train_views=...,
    val_views=...)``, as a Teach model is made), such views are kept, while pictures of
    other things stay flagged (features drawn per class: the picture, a view of it is the
    picture moved along one of a few "view" directions; seeded)."""
    from webapp.engines.openset import fit_knn
    from webapp.scores import knn_distance

    rng = np.random.default_rng(2)
    dims, kinds = 64, rng.normal(0, 0.8, (5, 64))  # five kinds of view

    def pictures(centre, count, viewed=False):
        base = centre + rng.normal(0, 0.15, (count, dims))
        if viewed:
            base = base + kinds[rng.integers(0, len(kinds), count)]
        return base

    without, with_views, flagged = [], [], []
    for _ in range(50):
        centres = rng.normal(0, 1, (3, dims))
        train = np.vstack([pictures(c, 20) for c in centres])
        val = np.vstack([pictures(c, 4) for c in centres])
        views = np.vstack([pictures(c, 80, viewed=True) for c in centres])
        val_views = np.vstack([pictures(c, 16, viewed=True) for c in centres])
        shown = np.vstack([pictures(c, 10, viewed=True) for c in centres])
        others = rng.normal(0, 1, (30, dims))
        plain = fit_knn(train, val)
        viewed = fit_knn(train, val, train_views=views, val_views=val_views)
        assert viewed["training_views"] == len(views)
        assert viewed["validation_views"] == len(val_views)
        for kept, criterion in ((without, plain), (with_views, viewed)):
            bank = criterion["bank"].astype(np.float32)
            kept.append(np.mean(knn_distance(bank, shown, 1) <= criterion["threshold"]))
        bank = viewed["bank"].astype(np.float32)
        flagged.append(np.mean(knn_distance(bank, others, 1) > viewed["threshold"]))
    assert np.mean(without) < 0.5 and np.mean(with_views) >= 0.9
    assert np.mean(flagged) >= 0.95
