"""The seed's server class as an echo server, for bench/run.py.

The seed (shared/seed/seed_server.py) serves with socketserver.TCPServer and
a BaseRequestHandler that answers one recv(). This is the same framework
with the threading mix-in, as its notes recommend for concurrent clients:
socketserver.ThreadingTCPServer, one thread per connection, the handler
echoing until the client closes. Two settings are raised so that the
benchmark measures the model rather than its defaults: the listen backlog
(request_queue_size, 5 by default, drops connections at 1000 clients) and
daemon_threads (so the process exits without joining 10,000 threads).
TCP_NODELAY is set on each connection, as every server in the comparison does.

Usage: python3 threading_echo.py HOST PORT   (PORT 0 picks a free port)
Prints "listening HOST:PORT" on stdout once bound.
"""
import socket
import socketserver
import sys


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        conn = self.request
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                conn.sendall(data)
            except OSError:
                return


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # A client that resets its connection is normal under load.
        pass


def main():
    if len(sys.argv) != 3:
        sys.stderr.write("usage: threading_echo.py HOST PORT\n")
        sys.exit(2)
    server = Server((sys.argv[1], int(sys.argv[2])), EchoHandler)
    host, port = server.server_address[:2]
    print("listening %s:%d" % (host, port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
