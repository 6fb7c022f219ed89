"""The proxy service: aiohttp on asyncio, state in SQLite (proxy/service/store.py).

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
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import umbral_pre
from aiohttp import web

from proxy import api, auth
from proxy.service.crypto_worker import BadCapsule, ReencryptPool, WorkerDied
from proxy.errors import IdentityError, ProxyError
from proxy.keyring import PublicIdentity, parse_public
from proxy.service.store import ALL_ROLES, ANY_RECIPIENT, GUARD, Grant, GrantConflict, Store, User

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STORE = web.AppKey("store", Store)
WINDOW = web.AppKey("window", int)
KFRAGS = web.AppKey("kfrags", dict)
POOL = web.AppKey("pool", object)  # a ReencryptPool, or None: re-encrypt in this process
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


def _capture_middleware(path: Path) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An audit aid for tests: every request body the proxy receives and every answer it sends,
    appended to *path* (mode 0600) as JSON lines, so a test can show that nothing the proxy ever
    saw decrypts anything.  Enabled only by ``ServeConfig.capture`` (the hidden ``proxy serve
--capture``); never in normal operation
    (the file holds kfrags, which are the proxy's to keep)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    @web.middleware
    async def capture(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)  # the inner middlewares turn every failure into a response
        try:
            body = await request.read()  # read (and cached) by then, unless it was too large
        except web.HTTPException:
            body = b""
        sent = response.body if isinstance(response, web.Response) else b""
        line = {"method": request.method, "path": request.raw_path, "status": response.status,
                "headers": {k: v for k, v in request.headers.items() if k.lower().startswith("x-umbrafs-")},
                "request": api.b64(body), "response": api.b64(bytes(sent or b""))}
        os.write(fd, (json.dumps(line) + "\n").encode())
        return response

    return capture


def _caller(request: web.Request, role: str = "reader", guard_ok: bool = False) -> User:
    """The authenticated caller if it has *role* (or is a guard where *guard_ok*), else 403."""
    user: User = request["user"]
    if not (user.has_role(role) or (guard_ok and user.role == GUARD)):
        raise Forbidden(f"this needs the {role} role (you are {user.role})")
    return user


def _may_see(user: User, grant: Grant) -> bool:
    return user.role == "admin" or user.fingerprint in (grant.owner, grant.recipient) or user.guards(grant.recipient)


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
    return web.json_response(_caller(request, guard_ok=True).to_json())


async def register_user(request: web.Request) -> web.Response:
    admin = _caller(request, "admin")
    body = api.parse_json(request["body"])
    role = api.field_str(body, "role")
    if role not in ALL_ROLES:
        raise api.BadRequest(f"role must be one of {', '.join(ALL_ROLES)}")
    scope = api.field_scope(body) if role == GUARD else ()
    if role != GUARD and body.get("scope") not in (None, []):
        raise api.BadRequest("only a guard has a scope")
    try:
        public = parse_public(api.field_str(body, "identity", max_len=api.MAX_BODY))
    except IdentityError as exc:
        raise api.BadRequest(str(exc)) from None
    user = _user_of(public, role, scope)
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
    # The kfrag must be signed by the owner's registered signing key (nobody registers a grant
    # in another's name) and be made for the recipient's registered key.  It must delegate from
    # the share's own key, never from the owner identity's Umbral key: a kfrag re-encrypts every
    # capsule under its delegating key, and the recipient could bring any other capsule.
    if verifying_pk != owner.verifying_pk:
        raise api.BadRequest("verifying_pk is not the owner's registered signing key")
    if delegating_pk == owner.umbral_pk:
        raise api.BadRequest("delegating_pk must be the share's own key, not the owner's identity key "
                             "(a kfrag from it would re-encrypt every capsule sealed for the owner)")
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
    user = _caller(request, guard_ok=True)
    grant = await _existing_grant(request)
    if not _may_see(user, grant):
        raise Forbidden("not your grant")
    return web.json_response(grant.to_json())


async def list_grants(request: web.Request) -> web.Response:
    user = _caller(request, guard_ok=True)
    query = request.query
    for name in ("owner", "recipient"):
        if name in query and not api.FINGERPRINT.match(query[name]):
            raise api.BadRequest(f"query {name!r} must be a fingerprint")
    if query.get("active", "0") not in ("0", "1"):
        raise api.BadRequest("query 'active' must be 0 or 1")
    everyone = user.role == "admin" or (user.role == GUARD and ANY_RECIPIENT in user.scope)
    grants = await request.app[STORE].list_grants(
        involving=None if everyone else user.fingerprint,
        owner=query.get("owner"), recipient=query.get("recipient"), active_only=query.get("active") == "1",
        recipients=user.scope if user.role == GUARD and not everyone else None,
    )
    return web.json_response({"grants": [g.to_json() for g in grants]})


async def revoke_grant(request: web.Request) -> web.Response:
    user = _caller(request, guard_ok=True)
    grant = await _existing_grant(request)
    if user.role != "admin" and user.fingerprint != grant.owner and not user.guards(grant.recipient):
        raise Forbidden("only the grant's owner, an admin or a guard of its recipient can revoke it")
    changed = await request.app[STORE].revoke_grant(grant.grant_id, user.fingerprint, request["nonce"],
                                                    {"role": user.role})
    request.app[KFRAGS].pop(grant.grant_id, None)
    return web.json_response({"grant_id": grant.grant_id, "revoked": True, "already": not changed})


def _kfrag_of(app: web.Application, grant: Grant) -> umbral_pre.VerifiedKeyFrag:
    cache: dict[str, umbral_pre.VerifiedKeyFrag] = app[KFRAGS]
    kfrag = cache.get(grant.grant_id)
    if kfrag is None:
        assert grant.kfrag is not None
        # Verified before it was stored, and the database is the proxy's own: a kfrag altered
        # there would only yield cfrags that the recipient's CapsuleFrag.verify rejects.
        kfrag = umbral_pre.KeyFrag.from_bytes(grant.kfrag).skip_verification()
        if len(cache) >= _KFRAG_CACHE_MAX:
            cache.clear()  # rare; parsing one again costs ~40 µs
        cache[grant.grant_id] = kfrag
    return kfrag


async def _grant_to_reencrypt(app: web.Application, user: User, grant_id: str) -> Grant:
    """The grant, if *user* is its recipient and it is not revoked (404/403/410 otherwise)."""
    grant = await app[STORE].get_grant(grant_id)
    if grant is None:
        raise NotFound(f"no grant {grant_id}")
    if user.fingerprint != grant.recipient:
        raise Forbidden("only the grant's recipient can ask for re-encryption")
    if grant.revoked or grant.kfrag is None:
        raise Gone(f"grant {grant_id} was revoked")
    return grant


async def _cfrag(app: web.Application, grant: Grant, capsule_bytes: bytes) -> bytes:
    """The cfrag of *capsule_bytes* under *grant* (checked by the caller; not yet recorded):
    in a worker process if there are any (`--workers`), else here."""
    pool: ReencryptPool | None = app[POOL]  # type: ignore[assignment]
    if pool is not None and pool.size and grant.kfrag is not None:
        try:
            return await pool.reencrypt(capsule_bytes, grant.kfrag)
        except BadCapsule:
            raise api.BadRequest("capsule is malformed") from None
        except WorkerDied:
            pass  # logged by the pool; do it here
    capsule = _parse_capsule(capsule_bytes)
    return bytes(umbral_pre.reencrypt(capsule, _kfrag_of(app, grant)))


async def reencrypt(request: web.Request) -> web.Response:
    user = _caller(request)
    grant_id = _grant_id(request)
    body = api.parse_json(request["body"])
    capsule_bytes = api.field_bytes(body, "capsule", max_len=1024)
    cfrag = await _cfrag(request.app, await _grant_to_reencrypt(request.app, user, grant_id), capsule_bytes)
    # The cfrag leaves only once its record row (and the nonce) are committed; the group commit
    # re-checks the grant, so a revocation that committed meanwhile wins.
    if not await request.app[STORE].record_reencrypt(grant_id, user.fingerprint,
                                                     hashlib.sha256(capsule_bytes).hexdigest(), request["nonce"]):
        request.app[KFRAGS].pop(grant_id, None)
        raise Gone(f"grant {grant_id} was revoked")
    return web.json_response({"cfrag": api.b64(cfrag)})


_ITEM_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (api.BadRequest, 400), (Forbidden, 403), (NotFound, 404), (Gone, 410))


async def reencrypt_many(request: web.Request) -> web.Response:
    """Several capsules of the caller's grants in one signed request: one signature check, one
    nonce and one group commit for all of them.  Each item answers on its own (a revoked grant
    does not fail the others); every cfrag returned has its own record row.  At most
    api.MAX_BATCH items, so one request holds the event loop for tens of milliseconds at most."""
    user = _caller(request)
    body = api.parse_json(request["body"])
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= api.MAX_BATCH:
        raise api.BadRequest(f"field 'items' must be a list of 1..{api.MAX_BATCH} objects")
    errors = tuple(kind for kind, _ in _ITEM_ERRORS)
    results: list[dict[str, Any]] = []
    checked: list[tuple[int, Grant, bytes]] = []  # (index in results, grant, capsule)

    def failed(index: int, grant_id: object, exc: Exception) -> None:
        status = next(code for kind, code in _ITEM_ERRORS if isinstance(exc, kind))
        results[index] = {"grant_id": grant_id if isinstance(grant_id, str) else None,
                          "status": status, "error": str(exc)}

    for item in items:
        results.append({})
        grant_id = item.get("grant_id") if isinstance(item, dict) else None
        try:
            if not isinstance(item, dict):
                raise api.BadRequest("each item must be an object")
            grant_id = api.field_str(item, "grant_id", api.GRANT_ID)
            capsule_bytes = api.field_bytes(item, "capsule", max_len=1024)
            checked.append((len(results) - 1, await _grant_to_reencrypt(request.app, user, grant_id), capsule_bytes))
        except errors as exc:
            failed(len(results) - 1, grant_id, exc)
    # All at once: with worker processes they run side by side.
    cfrags = await asyncio.gather(*(_cfrag(request.app, g, c) for _, g, c in checked), return_exceptions=True)
    done: list[tuple[int, str, str]] = []  # (index in results, grant id, capsule digest)
    for (index, grant, capsule_bytes), cfrag in zip(checked, cfrags):
        if isinstance(cfrag, errors):
            failed(index, grant.grant_id, cfrag)
        elif isinstance(cfrag, BaseException):
            raise cfrag
        else:
            done.append((index, grant.grant_id, hashlib.sha256(capsule_bytes).hexdigest()))
            results[index] = {"grant_id": grant.grant_id, "status": 200, "cfrag": api.b64(cfrag)}
    recorded = await request.app[STORE].record_reencrypts([(g, d) for _, g, d in done], user.fingerprint,
                                                          request["nonce"]) if done else []
    for (index, grant_id, _), ok in zip(done, recorded):
        if not ok:
            request.app[KFRAGS].pop(grant_id, None)
            results[index] = {"grant_id": grant_id, "status": 410, "error": f"grant {grant_id} was revoked"}
    return web.json_response({"results": results})


@functools.lru_cache(maxsize=4096)
def _parse_capsule(capsule_bytes: bytes) -> umbral_pre.Capsule:
    """Parsing checks the capsule's proof (~0.2 ms, as much as the re-encryption itself); the
    same capsule comes back for every recipient and every mount, so keep recent ones."""
    try:
        return umbral_pre.Capsule.from_bytes(capsule_bytes)
    except ValueError:
        raise api.BadRequest("capsule is malformed") from None


def _user_of(public: PublicIdentity, role: str, scope: tuple[str, ...] = ()) -> User:
    return User(public.fingerprint, public.name, role, public.umbral_pk, public.verifying_pk, public.ed25519_pk, scope)


def make_app(store: Store, window: int = auth.DEFAULT_WINDOW, pool: ReencryptPool | None = None,
             capture: Path | None = None) -> web.Application:
    middlewares = [_errors, _authenticate]
    if capture is not None:
        log.warning("capturing every request and answer into %s (--capture)", capture)
        middlewares.insert(0, _capture_middleware(capture))
    app = web.Application(middlewares=middlewares, client_max_size=api.MAX_BODY)
    app[STORE] = store
    app[WINDOW] = window
    app[KFRAGS] = {}
    app[POOL] = pool
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
    app.router.add_post("/v1/reencrypt", reencrypt_many)
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
    workers: int = 0  # re-encryption worker processes (0: in the event loop's process)
    capture: Path | None = None  # tests only: every request and answer into this file (kfrags too)


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
    pool: ReencryptPool | None = None
    try:
        for admin in config.admins:
            existing = store.user(admin.fingerprint)
            if existing is None or existing.role != "admin":
                await store.put_user(_user_of(admin, "admin"), "bootstrap")
        pool = ReencryptPool(config.workers) if config.workers > 0 else None
        runner = web.AppRunner(make_app(store, config.window, pool, config.capture), access_log=None, handle_signals=False)
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
        if pool is not None:
            await pool.close()
        await store.close()
        if config.pidfile is not None:
            _remove_pidfile(config.pidfile)


def run(config: ServeConfig, ready: Callable[[str], None]) -> None:
    asyncio.run(serve(config, ready))
