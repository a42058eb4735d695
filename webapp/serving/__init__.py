"""The serving core, without Flask and without torch: decoding images (``imaging``), the
classifier one process serves (``classifier``), the holder that loads it once and follows
the model registry (``holder``), a prediction request's work (``prediction``), whether a
picture is unlike anything the model knows (``openset``) and the "how the model sees it"
view (``explain``).  The HTTP views (``webapp.views.api``, ``webapp.views.ui``, the admin)
call these; the engines behind them live in ``webapp.engines``."""
