"""Evaluation: splits of the lake, ranking metrics, baselines and reports (``reelrec evaluate``)."""
