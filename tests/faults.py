"""A TCP proxy between the app and PostgreSQL that injects real network faults: drop the
connection right after forwarding a COMMIT (the server commits, the client never hears back),
cut every connection at once (a server restart as the pool sees it), or refuse connections (the
server is down)."""
from __future__ import annotations

import socket
import threading
import time


class FaultProxy:
    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)):
        self.upstream = upstream
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.drop_after_commit = False     # the next COMMIT is forwarded, then the client is cut off
        self.commits_dropped = 0
        self.refusing = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            muted = threading.Event()  # set: the server's answers no longer reach the client
            threading.Thread(target=self._pump, args=(client, server, True, muted), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, muted), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool, muted: threading.Event) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if to_server and self.drop_after_commit and b"COMMIT\x00" in data:
                    self.drop_after_commit = False
                    muted.set()
                    dst.sendall(data)          # the server gets the COMMIT and commits ...
                    time.sleep(0.3)
                    self.commits_dropped += 1
                    self._close(src, dst)      # ... and the client never learns it did
                    return
                if not to_server and muted.is_set():
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def cut_all(self) -> None:
        """Every open connection is cut, as when the database server restarts."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for c, s in pairs:
            self._close(c, s)

    def stop(self) -> None:
        self._stop = True
        self.cut_all()
        try:
            self.listener.close()
        except OSError:
            pass
