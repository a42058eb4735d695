"""Fine-tuning: the recipe that turns labelled image folders into a model the server
serves, and the background jobs that run it for the Teach page.

Laid out as torchvision's classification reference scripts are:

* ``options``     the options, their defaults and checks, the command-line parser
* ``backbone``    the pretrained network a run starts from, its new head, its layer groups
* ``transforms``  the training augmentation and the server's own evaluation preprocessing
* ``data``        image folders -> train/val/test samples (``bursts`` keeps bursts together)
                  and the loaders
* ``loop``        optimizer, schedule, loss, one epoch of training, evaluation, early stop
* ``report``      metrics, the report JSON, the confusion matrix and curves PNGs
* ``recipe``      ``train()``: all of the above in order, and what goes beside the weights
* ``jobs``        the Teach job queue and its state on disk (no torch: web workers use it)
* ``runner``      the one process that trains queued jobs (``python -m webapp.jobs``)

The commands stay ``python -m webapp.finetune`` and ``python -m webapp.jobs``.  Nothing
imported by this file: a web worker importing ``webapp.training.jobs`` loads no torch.
"""
