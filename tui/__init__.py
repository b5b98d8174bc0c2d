"""llama-tui's front ends: the Textual app and the headless command line."""
