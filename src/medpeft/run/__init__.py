"""One run, top to bottom: encode, fit, predict, score, measure, record (see execute.py)."""
