"""Presenting results: metric tables as text (table.py) and metric files (results.py).
Library code returns results; the command line and reports format them with this package."""
