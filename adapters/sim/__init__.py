"""The simulated plant and its Modbus and OPC UA servers (demo, tests, benchmarks)."""
