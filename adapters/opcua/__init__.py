"""OPC UA in both directions (asyncua): client adapter, sessions, trust, server sink, certificates."""
