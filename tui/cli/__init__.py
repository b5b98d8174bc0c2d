"""The command line: argument parsing and dispatch (main.py), line mode and `ask` (plain.py),
history commands. No Textual here; the app is imported only when it is started."""
