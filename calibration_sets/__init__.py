"""Shipped calibration and evaluation data (the demo set lives in demo/)."""
