"""Asynchronous strategies: clients start and arrive one at a time on the clock, and the server publishes versions."""
