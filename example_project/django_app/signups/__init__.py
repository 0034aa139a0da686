"""A Django app whose ``tasks.py`` declares fanout functions."""
