"""Theme data files (*.toml), one Textual theme each; loaded by tui/themes.py."""
