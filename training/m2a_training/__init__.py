"""Training and evaluation of Mask2Anomaly.

This package imports the `m2a_perception` core; the core never imports it.
"""
