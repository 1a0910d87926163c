"""Starting and stopping an in-process pymodbus TCP server: the one place both servers
plcbridge runs (the plant simulator and its own result server) touch pymodbus' server API,
which changes between versions (3.16 already warns that its datastore classes go in v4).
"""

from __future__ import annotations

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice

__all__ = ["start_tcp_server", "stop_server"]


async def start_tcp_server(devices: SimDevice | list[SimDevice], host: str, port: int,
                           ) -> tuple[ModbusTcpServer, int]:
    """Serve ``devices`` on ``host:port`` in the background; returns the server and the bound
    port (``port=0`` picks a free one). Raises OSError when the port cannot be bound."""
    server = ModbusTcpServer(devices, address=(host, port))
    await server.serve_forever(background=True)
    sockets = getattr(server.transport, "sockets", None)
    if not sockets:
        # pymodbus logs a bind failure and returns without a listening socket: make it an error.
        await stop_server(server)
        raise OSError(f"Modbus server could not bind {host}:{port}")
    return server, int(sockets[0].getsockname()[1])


async def stop_server(server: ModbusTcpServer) -> None:
    """Stop listening and close every client connection."""
    await server.shutdown()  # type: ignore[no-untyped-call]
