"""Screens of the app: chat, draft, status, help, first run, and small dialogs."""
