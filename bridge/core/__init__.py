"""The core every layer shares: errors, Reading/TagStore, Score, the model contract, backoff,
time formatting. Imports only the standard library and numpy."""
