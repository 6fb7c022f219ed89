"""Anomaly detection: features per user and window, rules, the IsolationForest model, the detector."""
