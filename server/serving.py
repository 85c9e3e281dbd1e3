"""The end of a long-running HTTP service (the update service, the console): Ctrl-C or
SIGTERM, which the CLI turns into `KeyboardInterrupt`, stops serving and closes the port."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class InterruptibleServer(ThreadingHTTPServer):
    """A threading HTTP server that closes its listening socket however serving ends, so a
    restart can bind the port at once."""

    def serve_until_interrupted(self) -> None:
        """Serve until Ctrl-C or SIGTERM, then close the listening socket."""
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.server_close()
