"""The Python API: one load path (``opening.py``), batching and worker threads (``scheduler.py``, ``runner.py``),
``Encoder`` (``encoder.py``), the task classes (``tasks.py``, ``ner.py``), ``Generator`` and ``Translator`` (thin
adapters from text to the generation engine) and kernel warm-up (``warmup.py``).

The public names are re-exported by the ``tinybert`` package itself: ``from tinybert import Encoder``.
"""
