"""stdlib socketserver.ThreadingTCPServer, written as well as it can be.

usage: threading_server.py PORT [--burn]
"""

import socket
import socketserver
import sys
import threading

from burn import maybe_burn, raise_nofile


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        while n := sock.recv_into(buf):
            sock.sendall(view[:n])


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


raise_nofile()
threading.stack_size(256 * 1024)
maybe_burn()
with Server(("127.0.0.1", int(sys.argv[1])), Echo) as server:
    print(f"Server at 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
