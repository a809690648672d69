"""Evaluation: feature jobs, reference statistics, bits/dim jobs and the evaluate program.

:mod:`~diffjax.evaluation.features` streams features of samples or real images into moments,
:mod:`~diffjax.evaluation.references` builds and checks reference statistics,
:mod:`~diffjax.evaluation.likelihood` runs the bits/dim of a trained run, and
:mod:`~diffjax.evaluation.program` is ``python -m diffjax.evaluate`` as a library
(:func:`~diffjax.evaluation.program.evaluate_run`, :func:`~diffjax.evaluation.program.evaluate_samples`).
Each module imports what it needs itself; this package imports nothing.
"""
