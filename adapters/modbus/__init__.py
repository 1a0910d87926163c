"""Modbus in both directions (pymodbus): client adapter, codec, read planner, server sink."""
