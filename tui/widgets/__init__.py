"""Widgets of the app. They post messages (tui/messages.py); screens handle them with @on."""
