"""Presenting results: metric tables as text (table.py), metric files (results.py), figures (plots.py) and
the HTML run report (html.py, templates/). Library code returns results; the CLI and reports format them here."""
