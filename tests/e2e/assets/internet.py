"""The egress tests' "internet": run in a network namespace of the test's own.

    python3 internet.py CERT KEY ADDRESS...

On every address of the namespace: HTTP on 80 (answers with the Host it was sent and
the address it was reached at), TLS on 443 (after the handshake, the SNI and the
address), a banner on 8080 (the server speaks first), a UDP echo on 7. Prints
"ready" once all listen.
"""

import socket
import ssl
import sys
import threading


def serve_tcp(port, handle):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(64)

    def loop():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=guarded, args=(handle, conn), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def guarded(handle, conn):
    try:
        with conn:
            conn.settimeout(5)
            handle(conn)
    except (OSError, ssl.SSLError):
        pass


def http(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(4096)
        if not data:
            return
        head += data
    host = ""
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"host:"):
            host = line.split(b":", 1)[1].strip().decode()
    body = f"host={host} addr={conn.getsockname()[0]}\n".encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


def tls(context):
    def handle(conn):
        with context.wrap_socket(conn, server_side=True) as wrapped:
            wrapped.recv(100)
            wrapped.sendall(f"tls-hello addr={wrapped.getsockname()[0]}\n".encode())

    return handle


def banner(conn):
    conn.sendall(f"banner addr={conn.getsockname()[0]}\n".encode())


def udp_echo(address):
    # One socket per address: a reply from a socket bound to 0.0.0.0 would leave from
    # the namespace's routed address, which the client's connected socket ignores.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 7))

    def loop():
        while True:
            data, peer = sock.recvfrom(2048)
            sock.sendto(b"pong " + data, peer)

    threading.Thread(target=loop, daemon=True).start()


def main(cert, key, *addresses):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    serve_tcp(80, http)
    serve_tcp(443, tls(context))
    serve_tcp(8080, banner)
    for address in addresses:
        udp_echo(address)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(*sys.argv[1:])
