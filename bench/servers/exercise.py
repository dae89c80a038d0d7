"""The original exercise's server, as its report shows it (a baseline, not a model).

The original exercise's server, transcribed from its report: one thread per client, read exactly
DATA_SIZE bytes by concatenation, send them back, close.  BUFSIZE is not in
the report; 1024 is assumed.  Only the connect-per-message pattern suits it.
usage: exercise.py PORT [--burn]
"""

import socket
import sys
import threading

from burn import maybe_burn

HOST = "127.0.0.1"
PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
DATA_SIZE = 102400
BUFSIZE = 1024


def do_client(conn, addr) -> None:
    with conn:
        print("Connected by client at", addr)
        received_data = b''
        while len(received_data) < DATA_SIZE:
            data = conn.recv(BUFSIZE)
            if not data:
                break
            received_data += data
        print(f"Received {len(received_data)} bytes")
        conn.sendall(received_data)
        print("Data sent back to client")

    conn.close()
    print("Connection closed by client at", addr)


maybe_burn()
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ours: a bench rebinds
    s.bind((HOST, PORT))
    s.listen(5)
    print(f"Server at {HOST}:{s.getsockname()[1]}", flush=True)

    while True:
        conn, addr = s.accept()

        client = threading.Thread(target=do_client, args=(conn, addr))
        client.start()
