"""The study engine: what chains the steps (:mod:`ltexp.steps`) into a study.

- :mod:`ltexp.study.plan`: the cells a study runs (:func:`~ltexp.study.plan.plan_cells`) and
  what they would cost (``ltexp plan``).
- :mod:`ltexp.study.run`: one cell (``ltexp train``), its second stage, an ensemble, and the whole
  grid (``ltexp main``).
- :mod:`ltexp.study.executors`: cells in parallel, as local processes or Ray tasks.
- :mod:`ltexp.study.handoff`: waiting for cells another process has, taking over dead ones.
- :mod:`ltexp.study.tune`: a hyper-parameter search over one cell (``ltexp tune``).

The store's questions (finished cells, best tuned values, results) are
:mod:`ltexp.tracking.questions`.
"""
