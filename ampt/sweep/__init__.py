"""Sweeps: a comparison described once in a YAML file, run cell by cell.

``python -m ampt.sweep run|status|report SWEEP.yaml``. A cell is one
``train.py`` run plus its ``evaluate.py`` records, in the run folder that
:mod:`ampt.sweep.layout` derives from its settings (the shell scripts use the
same function). Modules: ``spec`` (the file, validation, expansion), ``layout``
(run folders), ``state`` (per-cell state files and locks), ``cell`` (one cell,
with retries), ``executors`` (local pool, SLURM through submitit), ``status``.
"""
