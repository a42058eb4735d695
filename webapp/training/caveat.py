"""What an evaluation cannot vouch for, in words: classes with no or too few test
pictures, and classes taken in too few bursts to be tested on one they never trained on.
No torch: a Teach model's metrics keep the facts (``facts``), and the admin page and
the Teach page say them in the reader's language (``message``) in a web worker."""

from __future__ import annotations

from webapp.messages import Message, MessageList
from webapp.training.bursts import MIN_BURSTS_TO_TEST

MIN_SUPPORT = 3  # fewer evaluation images than this in a class: its scores prove little


def facts(evaluation: dict) -> dict:
    """What ``message`` needs from an evaluation, as small plain JSON (a model's metrics
    keep it): the split, the classes taken in too few bursts (name -> bursts) and the
    classes with fewer than ``MIN_SUPPORT`` evaluation images (name -> images)."""
    bursts = evaluation.get("bursts") or {}
    short = {name: b["bursts"] for name, b in bursts.items()
             if b.get("by_burst") and b["bursts"] < MIN_BURSTS_TO_TEST}
    thin = {name: n for name, n in (evaluation.get("thin_classes") or {}).items()
            if name not in short}
    return {"split": evaluation.get("split", "test"), "short": short, "thin": thin}


def message(found: dict) -> Message | None:
    """What the evaluation could not measure, in words, or None: classes with no images
    (the macro average skips them, so 1.000 may hide them) or fewer than MIN_SUPPORT --
    and, first, when the split kept bursts together, the classes taken in too few bursts
    to be tested on one they never trained on.  ``found``: ``facts(evaluation)``."""
    short, thin = found.get("short") or {}, found.get("thin") or {}
    missing = ", ".join(name for name, n in thin.items() if n == 0)
    few = ", ".join(f"{name} ({n})" for name, n in thin.items() if n)
    split = Message("test") if found.get("split", "test") == "test" else Message("val")
    sentences = []
    if short:
        params = {"classes": ", ".join(short), "needed": MIN_BURSTS_TO_TEST,
                  "bursts": ", ".join(f"{name} {n}" for name, n in short.items())}
        sentences.append(Message(
            "too few bursts of pictures to test %(classes)s on a burst it never trained on "
            "(bursts: %(bursts)s; %(needed)s are needed), so there are no test pictures of "
            "it (take pictures of it at other moments: each hold of the button is one "
            "burst)", **params) if len(short) == 1 else Message(
            "too few bursts of pictures to test %(classes)s on a burst they never trained "
            "on (bursts: %(bursts)s; %(needed)s are needed), so there are no test pictures "
            "of them (take pictures of them at other moments: each hold of the button is "
            "one burst)", **params))
        copies = [name for name, n in short.items() if n == 1]
        if split == "val" and copies:
            sentences.append(Message("the validation pictures of %(classes)s are "
                                     "near-copies of training pictures",
                                     classes=", ".join(copies)))
    one = len(thin) == 1
    if missing and few:
        sentences.append(Message(
            "there are no %(split)s images of %(missing)s and fewer than %(count)s "
            "%(split)s images of %(few)s: these scores say little about those classes (add "
            "images of them)", split=split, missing=missing, few=few, count=MIN_SUPPORT))
    elif missing and one:
        sentences.append(Message(
            "there are no %(split)s images of %(missing)s: these scores say little about "
            "that class (add images of it)", split=split, missing=missing))
    elif missing:
        sentences.append(Message(
            "there are no %(split)s images of %(missing)s: these scores say little about "
            "those classes (add images of them)", split=split, missing=missing))
    elif few and one:
        sentences.append(Message(
            "there are fewer than %(count)s %(split)s images of %(few)s: these scores say "
            "little about that class (add images of it)", split=split, few=few,
            count=MIN_SUPPORT))
    elif few:
        sentences.append(Message(
            "there are fewer than %(count)s %(split)s images of %(few)s: these scores say "
            "little about those classes (add images of them)", split=split, few=few,
            count=MIN_SUPPORT))
    return MessageList(sentences) if sentences else None
