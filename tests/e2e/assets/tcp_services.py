"""Raw TCP services run inside a sandbox by the tests (standard library only).

tcp_services.py echo PORT              answers every chunk with b"echo:" + chunk
tcp_services.py tls-echo PORT CERT KEY the same behind TLS with the sandbox's own certificate
tcp_services.py pg PORT                enough of PostgreSQL's protocol (v3) for `psql -c`:
                                       trust auth, and each simple query answered with one
                                       text row "pg:<query>"
"""

import socket
import ssl
import struct
import sys
import threading


def echo(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(b"echo:" + data)


def read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def message(kind, payload):
    return kind + struct.pack("!i", len(payload) + 4) + payload


def pg(conn):
    # Startup: int32 length, int32 protocol (196608 = 3.0), then name/value pairs.
    length, code = struct.unpack("!ii", read_exact(conn, 8))
    read_exact(conn, length - 8)
    if code != 196608:
        return
    out = message(b"R", struct.pack("!i", 0))  # AuthenticationOk
    for name, value in ((b"server_version", b"15.0"), (b"client_encoding", b"UTF8"), (b"DateStyle", b"ISO, MDY")):
        out += message(b"S", name + b"\0" + value + b"\0")
    out += message(b"K", struct.pack("!ii", 1, 2)) + message(b"Z", b"I")
    conn.sendall(out)
    while True:
        kind = read_exact(conn, 1)
        (length,) = struct.unpack("!i", read_exact(conn, 4))
        body = read_exact(conn, length - 4)
        if kind == b"X":
            return
        if kind != b"Q":
            continue
        value = b"pg:" + body.rstrip(b"\0")
        field = b"answer\0" + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0)
        conn.sendall(
            message(b"T", struct.pack("!h", 1) + field)
            + message(b"D", struct.pack("!hi", 1, len(value)) + value)
            + message(b"C", b"SELECT 1\0")
            + message(b"Z", b"I")
        )


STORE = {}  # shared by every connection, as a server's keys are


def resp(conn):
    store = STORE
    reader = conn.makefile("rb")
    while True:
        line = reader.readline()
        if not line:
            return
        if not line.startswith(b"*"):
            continue
        args = []
        for _ in range(int(line[1:])):
            size = int(reader.readline()[1:])
            args.append(reader.read(size + 2)[:-2])
        command = args[0].upper() if args else b""
        if command == b"PING":
            reply = b"+PONG\r\n"
        elif command == b"ECHO" and len(args) == 2:
            reply = b"$%d\r\n%s\r\n" % (len(args[1]), args[1])
        elif command == b"SET" and len(args) == 3:
            store[args[1]] = args[2]
            reply = b"+OK\r\n"
        elif command == b"GET" and len(args) == 2:
            value = store.get(args[1])
            reply = b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
        else:
            reply = b"-ERR unknown command\r\n"
        conn.sendall(reply)


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    context = None
    if mode == "tls-echo":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
    handler = {"pg": pg, "resp": resp}.get(mode, echo)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(64)

    def serve(conn):
        try:
            if context is not None:
                conn = context.wrap_socket(conn, server_side=True)
            handler(conn)
        except (OSError, EOFError, ssl.SSLError):
            pass
        finally:
            conn.close()

    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
