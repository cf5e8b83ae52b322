"""Adapters in use: predict with finished runs on new texts, export them (merged or not), write their model cards.

Everything here rebuilds a run from its own result.json and reuses the training-time pipeline
(run/encode.py, run/kinds.py, run/predict.py), so a prediction is what the run itself would predict.
"""
