"""Screens: the app has one, the chat screen."""
