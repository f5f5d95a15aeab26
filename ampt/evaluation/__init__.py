"""Evaluation: robust accuracy under an attack (:mod:`.robust_accuracy`), which prompt a record evaluates
(:mod:`.evaluated_prompt`), rebuilding a run from its folder (:mod:`.run_loader`), and ``evaluate.py``'s back
end (:mod:`.evaluate_cli`). Importing the package imports none of them: the trainer bases use the first two
without the command-line back end.
"""
