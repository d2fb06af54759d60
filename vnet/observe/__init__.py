"""Seeing what a lab does: its picture (``graph``) and its expectations checked live
(``results`` for the pure outcome model and reports, ``probes`` for the checks themselves)."""
