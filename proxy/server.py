"""The proxy service: aiohttp on asyncio, state in SQLite (proxy/store.py).

It holds one kfrag per grant and turns capsules into cfrags for the grant's recipient; it
never holds anything that decrypts data.  Every /v1 request is authenticated by the caller's
Ed25519 signature (proxy/auth.py) and authorised by role: reader < owner < admin, each
allowed what the ones before it are.  Logs name methods, paths, statuses and fingerprint
prefixes, never a body.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import umbral_pre
from aiohttp import web

from . import api, auth
from .errors import IdentityError, ProxyError
from .identity import PublicIdentity, parse_public
from .store import ROLES, Grant, GrantConflict, Store, User

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STORE = web.AppKey("store", Store)
WINDOW = web.AppKey("window", int)
KFRAGS = web.AppKey("kfrags", dict)
_KFRAG_CACHE_MAX = 10000


class Forbidden(Exception):
    """Authenticated, but the caller's role or relation to the grant does not allow this (403)."""


class NotFound(Exception):
    """404 with a JSON error."""


class Gone(Exception):
    """410: the grant was revoked."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON body; the access line goes to the log here."""
    try:
        response = await handler(request)
    except api.BadRequest as exc:
        response = _error(400, str(exc))
    except auth.AuthError as exc:
        response = _error(401, str(exc))
    except Forbidden as exc:
        response = _error(403, str(exc))
    except NotFound as exc:
        response = _error(404, str(exc))
    except GrantConflict as exc:
        response = _error(409, str(exc))
    except Gone as exc:
        response = _error(410, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, exc.reason)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        response = _error(500, "internal error")
    user: User | None = request.get("user")
    log.log(logging.INFO if response.status >= 400 else logging.DEBUG, "%s %s -> %d (%s)", request.method,
            request.path, response.status, user.fingerprint[:16] if user else "-")
    return response


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    body = await request.read()  # bounded by client_max_size (413 beyond)
    signed = auth.parse_headers(request.headers)
    window = request.app[WINDOW]
    auth.check_time(signed, time.time(), window)
    store = request.app[STORE]
    user = store.user(signed.key_id)
    auth.check_signature(user.ed25519_pk if user else None, request.method, request.raw_path, body, signed)
    assert user is not None  # check_signature fails for an unknown key
    claim = store.claim_nonce(signed.key_id, signed.nonce, auth.nonce_expiry(signed, window))
    if claim is None:
        raise auth.AuthError("replayed request (nonce already used)")
    request["user"] = user
    request["body"] = body
    request["nonce"] = claim
    try:
        return await handler(request)
    finally:
        # A write stores the nonce in its own transaction; anything else stores it here, and
        # always before the answer leaves, so a restart cannot reopen the window.
        await store.persist_nonce(claim)


def _caller(request: web.Request, role: str = "reader") -> User:
    user: User = request["user"]
    if not user.has_role(role):
        raise Forbidden(f"this needs the {role} role (you are {user.role})")
    return user


def _grant_id(request: web.Request) -> str:
    grant_id = request.match_info["grant_id"]
    if not api.GRANT_ID.match(grant_id):
        raise api.BadRequest("malformed grant id")
    return grant_id


async def _existing_grant(request: web.Request) -> Grant:
    grant_id = _grant_id(request)
    grant = await request.app[STORE].get_grant(grant_id)
    if grant is None:
        raise NotFound(f"no grant {grant_id}")
    return grant


# -- handlers ------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    seq, _ = request.app[STORE].head
    return web.json_response({"status": "ok", "records": seq})


async def openapi_doc(request: web.Request) -> web.Response:
    return web.json_response(api.openapi())


async def whoami(request: web.Request) -> web.Response:
    return web.json_response(_caller(request).to_json())


async def register_user(request: web.Request) -> web.Response:
    admin = _caller(request, "admin")
    body = api.parse_json(request["body"])
    role = api.field_str(body, "role")
    if role not in ROLES:
        raise api.BadRequest(f"role must be one of {', '.join(ROLES)}")
    try:
        public = parse_public(api.field_str(body, "identity", max_len=api.MAX_BODY))
    except IdentityError as exc:
        raise api.BadRequest(str(exc)) from None
    user = _user_of(public, role)
    created = await request.app[STORE].put_user(user, admin.fingerprint, request["nonce"])
    return web.json_response(user.to_json(), status=201 if created else 200)


async def list_users(request: web.Request) -> web.Response:
    _caller(request, "admin")
    return web.json_response({"users": [u.to_json() for u in request.app[STORE].users()]})


async def put_grant(request: web.Request) -> web.Response:
    owner = _caller(request, "owner")
    body = api.parse_json(request["body"])
    grant_id = api.field_str(body, "grant_id", api.GRANT_ID)
    owner_fp = api.field_str(body, "owner", api.FINGERPRINT)
    recipient_fp = api.field_str(body, "recipient", api.FINGERPRINT)
    delegating_pk = api.field_bytes(body, "delegating_pk", 33)
    verifying_pk = api.field_bytes(body, "verifying_pk", 33)
    receiving_pk = api.field_bytes(body, "receiving_pk", 33)
    threshold = api.field_int(body, "threshold", 1, api.MAX_SHARES)
    shares = api.field_int(body, "shares", 1, api.MAX_SHARES)
    kfrag_bytes = api.field_bytes(body, "kfrag", max_len=1024)
    if threshold > shares:
        raise api.BadRequest("threshold must not exceed shares")
    if owner_fp != owner.fingerprint:
        raise Forbidden("a grant's owner must be the caller")
    recipient = request.app[STORE].user(recipient_fp)
    if recipient is None:
        raise api.BadRequest("the recipient is not registered at this proxy")
    # The keys in the body must be the registered ones: a kfrag then provably delegates from
    # this owner to this recipient, and nobody can register a grant in another's name.
    if delegating_pk != owner.umbral_pk or verifying_pk != owner.verifying_pk:
        raise api.BadRequest("delegating_pk/verifying_pk are not the owner's registered keys")
    if receiving_pk != recipient.umbral_pk:
        raise api.BadRequest("receiving_pk is not the recipient's registered key")
    try:
        kfrag = umbral_pre.KeyFrag.from_bytes(kfrag_bytes)
        verified = kfrag.verify(
            umbral_pre.PublicKey.from_compressed_bytes(verifying_pk),
            umbral_pre.PublicKey.from_compressed_bytes(delegating_pk),
            umbral_pre.PublicKey.from_compressed_bytes(receiving_pk),
        )
    except (ValueError, umbral_pre.VerificationError):
        raise api.BadRequest("kfrag does not verify against the owner's and recipient's keys") from None
    grant = Grant(grant_id, owner_fp, recipient_fp, delegating_pk, verifying_pk, receiving_pk, threshold, shares,
                  bytes(verified), hashlib.sha256(bytes(verified)).hexdigest(), time.time_ns())
    created = await request.app[STORE].add_grant(grant, owner.fingerprint, request["nonce"])
    if created:
        request.app[KFRAGS][grant_id] = verified
    return web.json_response(grant.to_json(), status=201 if created else 200)


async def get_grant(request: web.Request) -> web.Response:
    user = _caller(request)
    grant = await _existing_grant(request)
    if user.role != "admin" and user.fingerprint not in (grant.owner, grant.recipient):
        raise Forbidden("not your grant")
    return web.json_response(grant.to_json())


async def list_grants(request: web.Request) -> web.Response:
    user = _caller(request)
    query = request.query
    for name in ("owner", "recipient"):
        if name in query and not api.FINGERPRINT.match(query[name]):
            raise api.BadRequest(f"query {name!r} must be a fingerprint")
    if query.get("active", "0") not in ("0", "1"):
        raise api.BadRequest("query 'active' must be 0 or 1")
    grants = await request.app[STORE].list_grants(
        involving=None if user.role == "admin" else user.fingerprint,
        owner=query.get("owner"), recipient=query.get("recipient"), active_only=query.get("active") == "1",
    )
    return web.json_response({"grants": [g.to_json() for g in grants]})


async def revoke_grant(request: web.Request) -> web.Response:
    user = _caller(request)
    grant = await _existing_grant(request)
    if user.role != "admin" and user.fingerprint != grant.owner:
        raise Forbidden("only the grant's owner or an admin can revoke it")
    changed = await request.app[STORE].revoke_grant(grant.grant_id, user.fingerprint, request["nonce"])
    request.app[KFRAGS].pop(grant.grant_id, None)
    return web.json_response({"grant_id": grant.grant_id, "revoked": True, "already": not changed})


async def reencrypt(request: web.Request) -> web.Response:
    user = _caller(request)
    grant = await _existing_grant(request)
    if user.fingerprint != grant.recipient:
        raise Forbidden("only the grant's recipient can ask for re-encryption")
    if grant.revoked or grant.kfrag is None:
        raise Gone(f"grant {grant.grant_id} was revoked")
    body = api.parse_json(request["body"])
    capsule_bytes = api.field_bytes(body, "capsule", max_len=1024)
    capsule = _parse_capsule(capsule_bytes)
    cache: dict[str, umbral_pre.VerifiedKeyFrag] = request.app[KFRAGS]
    kfrag = cache.get(grant.grant_id)
    if kfrag is None:
        # Verified before it was stored, and the database is the proxy's own: a kfrag altered
        # there would only yield cfrags that the recipient's CapsuleFrag.verify rejects.
        kfrag = umbral_pre.KeyFrag.from_bytes(grant.kfrag).skip_verification()
        if len(cache) >= _KFRAG_CACHE_MAX:
            cache.clear()  # rare; parsing one again costs ~40 µs
        cache[grant.grant_id] = kfrag
    if not await request.app[STORE].record_reencrypt(grant.grant_id, user.fingerprint,
                                                     hashlib.sha256(capsule_bytes).hexdigest(), request["nonce"]):
        cache.pop(grant.grant_id, None)
        raise Gone(f"grant {grant.grant_id} was revoked")
    cfrag = umbral_pre.reencrypt(capsule, kfrag)
    return web.json_response({"cfrag": api.b64(bytes(cfrag))})


@functools.lru_cache(maxsize=4096)
def _parse_capsule(capsule_bytes: bytes) -> umbral_pre.Capsule:
    """Parsing checks the capsule's proof (~0.2 ms, as much as the re-encryption itself); the
    same capsule comes back for every recipient and every mount, so keep recent ones."""
    try:
        return umbral_pre.Capsule.from_bytes(capsule_bytes)
    except ValueError:
        raise api.BadRequest("capsule is malformed") from None


def _user_of(public: PublicIdentity, role: str) -> User:
    return User(public.fingerprint, public.name, role, public.umbral_pk, public.verifying_pk, public.ed25519_pk)


def make_app(store: Store, window: int = auth.DEFAULT_WINDOW) -> web.Application:
    app = web.Application(middlewares=[_errors, _authenticate], client_max_size=api.MAX_BODY)
    app[STORE] = store
    app[WINDOW] = window
    app[KFRAGS] = {}
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", openapi_doc)
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_post("/v1/users", register_user)
    app.router.add_get("/v1/users", list_users)
    app.router.add_post("/v1/grants", put_grant)
    app.router.add_get("/v1/grants", list_grants)
    app.router.add_get("/v1/grants/{grant_id}", get_grant)
    app.router.add_delete("/v1/grants/{grant_id}", revoke_grant)
    app.router.add_post("/v1/grants/{grant_id}/reencrypt", reencrypt)
    return app


# -- running it ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServeConfig:
    host: str
    port: int
    db: Path
    admins: list[PublicIdentity] = field(default_factory=list)
    pidfile: Path | None = None
    window: int = auth.DEFAULT_WINDOW
    prune_interval: float = 30.0


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _write_pidfile(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n", encoding="ascii")
    tmp.replace(path)


def _remove_pidfile(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text(encoding="ascii").strip()) == os.getpid():
            path.unlink()


async def _prune_forever(store: Store, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await store.prune_nonces(time.time())
            log.debug("pruned %d expired nonces", removed)
        except Exception:
            log.exception("pruning nonces failed")


async def serve(config: ServeConfig, ready: Callable[[str], None]) -> None:
    """Listen until SIGTERM or SIGINT; *ready* gets the URL once the socket accepts connections."""
    store = await Store.open(config.db)
    runner: web.AppRunner | None = None
    try:
        for admin in config.admins:
            existing = store.user(admin.fingerprint)
            if existing is None or existing.role != "admin":
                await store.put_user(_user_of(admin, "admin"), "bootstrap")
        runner = web.AppRunner(make_app(store, config.window), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ProxyError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
        port = int(runner.addresses[0][1])
        url = _url(config.host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if config.pidfile is not None:
            _write_pidfile(config.pidfile)
        log.info("proxy listening on %s (database %s)", url, config.db)
        ready(url)
        pruner = asyncio.create_task(_prune_forever(store, config.prune_interval))
        try:
            await stop.wait()
        finally:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
        log.info("proxy on %s shutting down", url)
    finally:
        if runner is not None:
            await runner.cleanup()
        await store.close()
        if config.pidfile is not None:
            _remove_pidfile(config.pidfile)


def run(config: ServeConfig, ready: Callable[[str], None]) -> None:
    asyncio.run(serve(config, ready))
