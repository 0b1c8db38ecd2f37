"""Lesion and ROI classification: ROI extraction, CNN ensembles with calibrated probabilities, Grad-CAM, radiomic
features and the classical baseline, and the classification datasets they train on.
"""
