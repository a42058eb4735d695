"""``python -m webapp.finetune DATA_DIR --out model.pt`` (or ``flask --app app finetune``):
fine-tune an ImageNet model on your image folders and write a checkpoint the server
serves.  The recipe is the ``webapp.training`` package (``recipe.train`` runs it); this
module is only the command: it parses the options, runs the recipe and says what it wrote.
"""

from __future__ import annotations

import logging
import sys

from webapp.checkpoints.loaded import ModelLoadError
from webapp.config import ConfigError
from webapp.training.data import DatasetError
from webapp.training.options import FinetuneError, build_parser, options_from_args
from webapp.training.recipe import train


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    def say(message: str) -> None:
        print(message, flush=True)

    try:
        result = train(args.data_dir, args.out, options_from_args(args), say=say)
    except (DatasetError, FinetuneError, ModelLoadError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    report = result.report
    print(f"Kept epoch {report['best_epoch']} of {report['epochs_run']}: val accuracy "
          f"{report['val']['accuracy']:.3f}"
          + (f", test accuracy {report['test_accuracy']:.3f}"
             if report["test_accuracy"] is not None else "")
          + (f"; but {report['metrics']['caveat']}" if report["metrics"].get("caveat") else ""))
    print(f"Wrote {result.checkpoint}\n      {result.report_path}\n      "
          f"{result.confusion_png}\n      {result.curves_png}"
          + (f"\n      {result.checkpoint.with_name(report['int8']['file'])}"
             if "int8" in report else ""))
    print(f"Serve it: MODEL_WEIGHTS={result.checkpoint} gunicorn app:app")
    return 0


if __name__ == "__main__":
    sys.exit(main())

