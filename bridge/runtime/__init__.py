"""The running bridge: wiring, scheduling, stop order and the event store."""
