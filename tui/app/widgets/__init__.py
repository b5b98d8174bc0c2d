"""One widget per file, mirroring what is on screen."""
