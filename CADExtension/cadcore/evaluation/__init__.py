"""Scoring models: the metrics (Dice, HD95, AUC, calibration) and ``cad evaluate`` for both tasks.

Training imports the metrics from here for model selection, so evaluation sits below training.
"""
