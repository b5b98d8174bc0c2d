"""The Textual app: app.py, its tcss, screens/ and widgets/ (one widget per file)."""
