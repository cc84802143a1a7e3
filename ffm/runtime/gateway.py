"""The SuperLink's public face: the Fleet API alone, so that no data owner can reach the Control API.

flwr 1.42 serves the Fleet API (what SuperNodes dial), the Control API (register nodes, start and stop runs)
and the Runtime API on one HTTP port; its ``--fleet-api-address`` / ``--control-api-address`` are deprecated
and ignored. So ``ffm deploy superlink`` binds the SuperLink to 127.0.0.1 (the operator's machine) and puts
this gateway on the public address: it forwards ``/v1/fleet/*`` and the health check to the SuperLink and
answers everything else with 403 and one log line naming the caller. TLS ends here with the SuperLink's own
certificate (SuperNodes see the same certificate and CA as before); the hop to the SuperLink is loopback,
TLS-verified against the federation's CA.

Launch (``ffm deploy superlink`` does it):  python -m ffm.runtime.gateway --listen 0.0.0.0:9092 \
--upstream 127.0.0.1:9091 [--certs DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

__all__ = ["PUBLIC_PREFIXES", "gateway_app", "main"]

LOG = logging.getLogger("ffm.gateway")
PUBLIC_PREFIXES = ("/v1/fleet/",)  # what a SuperNode needs; the Control and Runtime APIs stay private
HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}


def _upstream_client(upstream: str, ca: Path | None, transport: httpx.AsyncBaseTransport | None = None
                     ) -> httpx.AsyncClient:
    if ca is None:
        return httpx.AsyncClient(base_url=f"http://{upstream}", timeout=None, transport=transport)
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # loopback, verified against the federation's CA; the name may differ
    return httpx.AsyncClient(base_url=f"https://{upstream}", verify=context, timeout=None)


def gateway_app(upstream: str, ca: Path | None = None, transport: httpx.AsyncBaseTransport | None = None
                ) -> Starlette:
    """The ASGI app: Fleet API requests forwarded to ``upstream`` (HOST:PORT), every other path refused
    (``transport``: how to reach the upstream, for a test's in-process SuperLink)."""
    client = _upstream_client(upstream, ca, transport)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not path.startswith(PUBLIC_PREFIXES):
            who = request.client.host if request.client else "?"
            LOG.warning("ffm gateway: refused %s %s from %s: only the Fleet API is served here", request.method,
                        path, who)
            return PlainTextResponse(f"ffm gateway: {path} is not served on this address (the Fleet API alone "
                                     "is; the Control API is the operator's)\n", status_code=403)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            reply = await client.request(request.method, path, params=request.query_params, headers=headers,
                                         content=await request.body())
        except httpx.TransportError as exc:  # the SuperLink is down or restarting: a gateway's 502, which
            # SuperNodes retry with backoff (a 500 would make them give the request up)
            LOG.warning("ffm gateway: the SuperLink at %s is unreachable (%s): 502", upstream, type(exc).__name__)
            return PlainTextResponse("ffm gateway: the SuperLink is unreachable; retry\n", status_code=502)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS | {"content-encoding"}}
        return Response(reply.content, status_code=reply.status_code, headers=out)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])],
                     lifespan=lifespan)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ffm.runtime.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="the public address SuperNodes dial")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the SuperLink (on loopback)")
    parser.add_argument("--certs", metavar="DIR", help="ca.pem, server.pem, server.key (as the SuperLink's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the gateway until stopped."""
    import uvicorn

    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)
    host, _, port = args.listen.rpartition(":")
    certs = Path(args.certs) if args.certs else None
    tls = {"ssl_certfile": str(certs / "server.pem"), "ssl_keyfile": str(certs / "server.key")} if certs else {}
    LOG.info("ffm gateway: serving the Fleet API of %s on %s (%s)", args.upstream, args.listen,
             "TLS" if certs else "insecure")
    uvicorn.run(gateway_app(args.upstream, certs / "ca.pem" if certs else None), host=host, port=int(port),
                log_level="warning", **tls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
