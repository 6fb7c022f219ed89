"""The proxy client (synchronous: the CLI and the mount call it outside their event loops)
and the threshold logic across N proxies.

`grant` puts one kfrag on each of N proxies (all or nothing), `open_capsule` asks proxies
until M verified cfrags are in hand and opens the capsule, `revoke` deletes the kfrags and
reports where it could not; revocation holds once N-M+1 proxies have deleted theirs.
"""
from __future__ import annotations

import http.client
import json
import logging
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import umbral_pre

from proxy import api, auth
from proxy.envelope import Delegation, parse_capsule, parse_public_key
from proxy.errors import (
    AccessRevoked,
    CapsuleError,
    GrantError,
    ProxyDown,
    ProxyError,
    ProxyRequestError,
    ProxyUnreachable,
)
from proxy.keyring import Identity, PublicIdentity

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0


def new_grant_id() -> str:
    """A fresh random grant id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_warned: set[str] = set()


def normalize_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GrantError(f"not a proxy URL: {url!r} (expected http://HOST:PORT)")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK and not parts.hostname.startswith("127."):
        if parts.hostname not in _warned:  # kfrags travel in these bodies: on the network, use https
            _warned.add(parts.hostname)
            log.warning("proxy %s is plain http on the network: kfrags and revocations can be read and "
                        "forged in transit; use https://", parts.hostname)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class ProxyClient:
    """Signed requests to one proxy over one kept-alive connection (not thread-safe)."""

    def __init__(self, url: str, identity: "Identity | auth.RequestSigner", timeout: float = DEFAULT_TIMEOUT,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = normalize_url(url)
        parts = urllib.parse.urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._prefix = parts.path
        self.identity = identity
        self.timeout = timeout
        self._clock = clock
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "ProxyClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._netloc, timeout=self.timeout)
        return self._conn

    def send(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
             signed: bool = True) -> tuple[int, Any]:
        """One request; (status, parsed JSON).  ProxyDown if the proxy cannot be reached."""
        full_path = self._prefix + path
        all_headers = {"Content-Type": "application/json"} if body else {}
        if signed:
            all_headers.update(auth.sign_request(self.identity, method, full_path, body, self._clock()))
        all_headers.update(headers or {})
        for attempt in (1, 2):
            reused = self._conn is not None
            try:
                conn = self._connection()
                conn.request(method, full_path, body=body or None, headers=all_headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
                if response.will_close:
                    self.close()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:  # the server closed an idle kept-alive connection
                    if signed:
                        all_headers.update(auth.sign_request(self.identity, method, full_path, body, self._clock()))
                    continue
                raise ProxyDown(self.url, _reason(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise ProxyDown(self.url, _reason(exc)) from None
        try:
            obj = json.loads(data) if data else {}
        except (ValueError, UnicodeDecodeError):
            obj = {"error": data[:200].decode("utf-8", "replace")}
        return status, obj

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """A signed JSON request; ProxyRequestError for any error status."""
        body = json.dumps(payload, separators=(",", ":")).encode() if payload is not None else b""
        status, obj = self.send(method, path, body)
        if status >= 400:
            message = obj.get("error") if isinstance(obj, dict) else None
            raise ProxyRequestError(self.url, status, str(message or http.client.responses.get(status, "error")))
        return obj

    # -- endpoints ------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        status, obj = self.send("GET", "/health", signed=False)
        if status != 200:
            raise ProxyRequestError(self.url, status, "unhealthy")
        return obj

    def whoami(self) -> dict[str, Any]:
        return self.call("GET", "/v1/whoami")

    def register(self, public: PublicIdentity, role: str, scope: Sequence[str] | None = None) -> dict[str, Any]:
        """Register *public* with *role* (admin only); a guard needs *scope*: fingerprints or ["*"]."""
        body: dict[str, Any] = {"identity": public.to_text(), "role": role}
        if scope is not None:
            body["scope"] = list(scope)
        return self.call("POST", "/v1/users", body)

    def users(self) -> list[dict[str, Any]]:
        return self.call("GET", "/v1/users")["users"]

    def put_grant(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/v1/grants", body)

    def get_grant(self, grant_id: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/grants/{_quote(grant_id)}")

    def list_grants(self, owner: str | None = None, recipient: str | None = None,
                    active: bool | None = None) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("owner", owner), ("recipient", recipient)) if v is not None}
        if active is not None:
            query["active"] = "1" if active else "0"
        path = "/v1/grants" + ("?" + urllib.parse.urlencode(query) if query else "")
        return self.call("GET", path)["grants"]

    def reencrypt(self, grant_id: str, capsule: bytes) -> bytes:
        """The cfrag's bytes, unverified: check it with CapsuleFrag.verify before use."""
        obj = self.call("POST", f"/v1/grants/{_quote(grant_id)}/reencrypt", {"capsule": api.b64(capsule)})
        try:
            return api.field_bytes(obj, "cfrag", max_len=1024)
        except api.BadRequest:
            raise ProxyRequestError(self.url, 502, "the proxy's answer holds no cfrag") from None

    def reencrypt_many(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | ProxyRequestError]:
        """Several (grant id, capsule) in one signed request (at most api.MAX_BATCH): for each, the
        cfrag's bytes (unverified: check each with CapsuleFrag.verify) or the error it got."""
        obj = self.call("POST", "/v1/reencrypt",
                        {"items": [{"grant_id": g, "capsule": api.b64(c)} for g, c in items]})
        results = obj.get("results") if isinstance(obj, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise ProxyRequestError(self.url, 502, "the proxy's answer does not match the request")
        out: list[bytes | ProxyRequestError] = []
        for result in results:
            try:
                if not isinstance(result, dict) or result.get("status") != 200:
                    status = result.get("status") if isinstance(result, dict) else None
                    error = result.get("error") if isinstance(result, dict) else None
                    out.append(ProxyRequestError(self.url, status if isinstance(status, int) else 502,
                                                 str(error or "no cfrag")))
                    continue
                out.append(api.field_bytes(result, "cfrag", max_len=1024))
            except api.BadRequest:
                out.append(ProxyRequestError(self.url, 502, "the proxy's answer holds no cfrag"))
        return out

    def revoke(self, grant_id: str) -> dict[str, Any]:
        return self.call("DELETE", f"/v1/grants/{_quote(grant_id)}")


def _quote(grant_id: str) -> str:
    return urllib.parse.quote(grant_id, safe="")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return exc.__class__.__name__


def _check_threshold(proxies: Sequence[str], threshold: int) -> list[str]:
    urls = [normalize_url(u) for u in proxies]
    if not urls:
        raise GrantError("no proxies given")
    if len(set(urls)) != len(urls):
        raise GrantError("a proxy is listed twice")
    if len(urls) > api.MAX_SHARES:
        raise GrantError(f"at most {api.MAX_SHARES} proxies")
    # umbral-pre accepts threshold 0 or > shares without complaint: check here.
    if type(threshold) is not int or not 1 <= threshold <= len(urls):
        raise GrantError(f"threshold must be between 1 and the number of proxies ({len(urls)}), got {threshold}")
    return urls


def _check_grant_id(grant_id: str) -> None:
    if not isinstance(grant_id, str) or not api.GRANT_ID.match(grant_id):
        raise GrantError("a grant id is 8-128 characters of [A-Za-z0-9_-]")


def _parallel(urls: Sequence[str], work: Callable[[str], Any]) -> dict[str, Any | ProxyError]:
    """Run *work* for every URL at once; each result or the ProxyError it raised."""
    out: dict[str, Any | ProxyError] = {}
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        futures = {pool.submit(work, url): url for url in urls}
        for future, url in futures.items():
            try:
                out[url] = future.result()
            except ProxyError as exc:
                out[url] = exc
    return out


def _why(exc: ProxyError) -> str:
    if isinstance(exc, ProxyDown):
        return f"{exc.url} ({exc.reason})"
    if isinstance(exc, ProxyRequestError):
        return f"{exc.url} ({exc.status} {exc.message})"
    return str(exc)


# -- threshold operations ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GrantReport:
    grant_id: str
    proxies: list[str]
    threshold: int
    created: list[str]   # stored now
    existing: list[str]  # held the same grant already (a retry)


def grant(proxies: Sequence[str], owner: Identity, recipient: PublicIdentity, threshold: int, grant_id: str,
          delegation: Delegation, timeout: float = DEFAULT_TIMEOUT) -> GrantReport:
    """Make N = len(proxies) kfrags share→recipient, threshold M, and put one on each proxy.

    The kfrags come from the share's own *delegation* (whose public key the capsule is sealed
    under: `envelope.seal`), signed with the owner's signing key, so they re-encrypt that
    share's capsule and no other.

    All or nothing: if any proxy refuses or cannot be reached, the kfrags already stored are
    revoked again (best effort) and GrantError says where and why.  The id is spent then (the
    proxies keep revoked ids as tombstones): try again with a new one.
    """
    urls = _check_threshold(proxies, threshold)
    _check_grant_id(grant_id)
    kfrags = umbral_pre.generate_kfrags(delegation.secret_key, recipient.umbral_public_key(), owner.signer,
                                        threshold, len(urls), True, True)
    bodies = {
        url: {
            "grant_id": grant_id, "owner": owner.fingerprint, "recipient": recipient.fingerprint,
            "delegating_pk": api.b64(delegation.public_bytes), "verifying_pk": api.b64(owner.public.verifying_pk),
            "receiving_pk": api.b64(recipient.umbral_pk), "threshold": threshold, "shares": len(urls),
            "kfrag": api.b64(bytes(kfrag)),
        }
        for url, kfrag in zip(urls, kfrags)
    }

    # The status tells created (201) from retried (200); call() hides it, so ask send() directly.
    def put_status(url: str) -> int:
        with ProxyClient(url, owner, timeout) as client:
            body = json.dumps(bodies[url], separators=(",", ":")).encode()
            status, obj = client.send("POST", "/v1/grants", body)
            if status >= 400:
                raise ProxyRequestError(url, status, str(obj.get("error", "error")) if isinstance(obj, dict) else "error")
            return status

    results = _parallel(urls, put_status)
    failed = {u: r for u, r in results.items() if isinstance(r, ProxyError)}
    if failed:
        stored = [u for u in urls if u not in failed]
        if stored:
            _parallel(stored, lambda u: _revoke_one(u, owner, grant_id, timeout))
        raise GrantError(
            f"could not store grant {grant_id} on {len(failed)} of {len(urls)} proxies: "
            + "; ".join(_why(e) for e in failed.values())
            + (" (withdrawn from the others)" if stored else "")
        )
    return GrantReport(grant_id, urls, threshold,
                       [u for u in urls if results[u] == 201], [u for u in urls if results[u] != 201])


def _revoke_one(url: str, identity: "Identity | auth.RequestSigner", grant_id: str, timeout: float) -> dict[str, Any]:
    with ProxyClient(url, identity, timeout) as client:
        return client.revoke(grant_id)


def open_capsule(proxies: Sequence[str], recipient: Identity, owner: PublicIdentity, capsule: bytes,
                 ciphertext: bytes, threshold: int, grant_id: str, delegating_pk: bytes,
                 timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """Ask proxies for cfrags (M at a time, more only if some fail), verify each, and open.

    *delegating_pk* is the share's own public key (the share record's `sealed.delegating_pk`);
    each cfrag must verify as made by a kfrag the *owner* signed from it for *recipient*.

    AccessRevoked when so many proxies say "revoked" that M cannot be reached; ProxyUnreachable
    ("only K of M proxies reachable: …") when too few answer; CapsuleError if the verified
    cfrags do not open the ciphertext.
    """
    urls = _check_threshold(proxies, threshold)
    _check_grant_id(grant_id)
    capsule_obj = parse_capsule(capsule)
    owner_pk, verifying_pk = parse_public_key(delegating_pk), owner.verifying_key()
    receiving_pk = recipient.public.umbral_public_key()
    verified: list[umbral_pre.VerifiedCapsuleFrag] = []
    revoked: list[str] = []
    failures: list[str] = []

    def ask(url: str) -> bytes:
        with ProxyClient(url, recipient, timeout) as client:
            return client.reencrypt(grant_id, capsule)

    pending = list(urls)
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        in_flight: dict[Future[bytes], str] = {}

        def launch() -> None:
            while pending and len(verified) + len(in_flight) < threshold:
                url = pending.pop(0)
                in_flight[pool.submit(ask, url)] = url

        launch()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                url = in_flight.pop(future)
                try:
                    cfrag_bytes = future.result()
                except ProxyRequestError as exc:
                    if exc.status == 410:
                        revoked.append(url)
                    else:
                        failures.append(_why(exc))
                    continue
                except ProxyError as exc:
                    failures.append(_why(exc))
                    continue
                try:
                    cfrag = umbral_pre.CapsuleFrag.from_bytes(cfrag_bytes)
                    verified.append(cfrag.verify(capsule_obj, verifying_pk, owner_pk, receiving_pk))
                except (ValueError, umbral_pre.VerificationError):
                    failures.append(f"{url} (returned a cfrag that does not verify)")
            launch()

    if len(verified) < threshold:
        if len(revoked) > len(urls) - threshold:
            raise AccessRevoked(f"access revoked: grant {grant_id} was revoked at {len(revoked)} of {len(urls)} proxies")
        reasons = failures + [f"{u} (revoked)" for u in revoked]
        raise ProxyUnreachable(f"only {len(verified)} of {threshold} proxies reachable: " + ", ".join(reasons))
    try:
        return bytes(umbral_pre.decrypt_reencrypted(recipient.umbral_sk, owner_pk, capsule_obj,
                                                    verified[:threshold], ciphertext))
    except ValueError:
        raise CapsuleError(f"grant {grant_id}: the cfrags do not open the ciphertext (damaged share, "
                           "or capsule and ciphertext of different shares)") from None


@dataclass(frozen=True, slots=True)
class RevokeReport:
    grant_id: str
    threshold: int
    proxies: list[str]
    deleted: list[str] = field(default_factory=list)      # revoked by this call
    already: list[str] = field(default_factory=list)      # revoked before, or never held it (404)
    unreachable: dict[str, str] = field(default_factory=dict)  # url → reason
    refused: dict[str, str] = field(default_factory=dict)      # url → "403 …" and other errors

    @property
    def holds(self) -> bool:
        """No M proxies are left that could still re-encrypt: N-M+1 no longer hold the kfrag."""
        gone = len(self.deleted) + len(self.already)
        return gone >= len(self.proxies) - self.threshold + 1

    @property
    def complete(self) -> bool:
        return len(self.deleted) + len(self.already) == len(self.proxies)

    def summary(self) -> str:
        parts = [f"grant {self.grant_id}: deleted at {len(self.deleted) + len(self.already)} of {len(self.proxies)} proxies"]
        if self.unreachable:
            parts.append("unreachable: " + ", ".join(f"{u} ({r})" for u, r in self.unreachable.items()))
        if self.refused:
            parts.append("refused: " + ", ".join(f"{u} ({r})" for u, r in self.refused.items()))
        parts.append("revocation holds" if self.holds else
                     f"revocation does NOT hold yet (needs {len(self.proxies) - self.threshold + 1})")
        return "; ".join(parts)


def revoke(proxies: Sequence[str], identity: "Identity | auth.RequestSigner", grant_id: str, threshold: int,
           timeout: float = DEFAULT_TIMEOUT) -> RevokeReport:
    """Delete the grant's kfrag at every proxy (as its owner, an admin, or a guard of its
    recipient: any `auth.RequestSigner`); never raises for a proxy that fails — the report says
    which deleted and which could not be reached."""
    urls = _check_threshold(proxies, threshold)
    _check_grant_id(grant_id)
    report = RevokeReport(grant_id, threshold, urls)
    for url, result in _parallel(urls, lambda u: _revoke_one(u, identity, grant_id, timeout)).items():
        if isinstance(result, ProxyDown):
            report.unreachable[url] = result.reason
        elif isinstance(result, ProxyRequestError) and result.status == 404:
            report.already.append(url)
        elif isinstance(result, ProxyRequestError):
            report.refused[url] = f"{result.status} {result.message}"
        elif isinstance(result, ProxyError):
            report.refused[url] = str(result)
        elif result.get("already"):
            report.already.append(url)
        else:
            report.deleted.append(url)
    return report


@dataclass
class GrantStatus:
    """What each proxy says of one grant: still active, revoked (when, by whom), or unknown."""

    grant_id: str
    threshold: int
    active: list[str] = field(default_factory=list)
    revoked: dict[str, tuple[float, str]] = field(default_factory=dict)  # url -> (when, by fingerprint)
    missing: list[str] = field(default_factory=list)                    # 404: never stored or pruned
    unreachable: dict[str, str] = field(default_factory=dict)           # url -> why

    @property
    def works(self) -> bool | None:
        """Can the recipient still get cfrags? None when the unreachable proxies decide it."""
        if len(self.active) >= self.threshold:
            return True
        if len(self.active) + len(self.unreachable) < self.threshold:
            return False
        return None


def grant_status(proxies: Sequence[str], identity: "Identity | auth.RequestSigner", grant_id: str, threshold: int,
                 timeout: float = DEFAULT_TIMEOUT) -> GrantStatus:
    """Ask every proxy about one grant (as its owner, recipient, an admin or a guard)."""
    urls = _check_threshold(proxies, threshold)
    _check_grant_id(grant_id)

    def one(url: str) -> dict[str, Any]:
        with ProxyClient(url, identity, timeout) as client:
            return client.get_grant(grant_id)

    status = GrantStatus(grant_id, threshold)
    for url, result in _parallel(urls, one).items():
        if isinstance(result, ProxyRequestError) and result.status == 404:
            status.missing.append(url)
        elif isinstance(result, ProxyError):
            status.unreachable[url] = result.reason if isinstance(result, ProxyDown) else str(result)
        elif result.get("revoked") is not None:
            status.revoked[url] = (float(result["revoked"]), str(result.get("revoked_by") or ""))
        else:
            status.active.append(url)
    return status


def revoke_recipient(proxies: Sequence[str], signer: "Identity | auth.RequestSigner", recipient: str,
                     timeout: float = DEFAULT_TIMEOUT) -> list[RevokeReport]:
    """Revoke every active grant addressed to *recipient* (a fingerprint) that *signer* can see
    at *proxies* — what a guard does in one call.  Each grant is revoked at every given proxy that
    lists it, with the threshold the proxies report; unreachable proxies are in the reports."""
    urls = [normalize_url(u) for u in proxies]

    def active(url: str) -> list[dict[str, Any]]:
        with ProxyClient(url, signer, timeout) as client:
            return client.list_grants(recipient=recipient, active=True)

    found: dict[str, tuple[int, list[str]]] = {}
    down: dict[str, ProxyError] = {}
    for url, result in _parallel(urls, active).items():
        if isinstance(result, ProxyError):
            down[url] = result
            continue
        for g in result:
            threshold, holders = found.setdefault(g["grant_id"], (int(g["threshold"]), []))
            holders.append(url)
    reports = []
    for grant_id, (threshold, holders) in sorted(found.items()):
        # Ask every proxy we could not list as well: it may hold this grant too.
        targets = holders + [u for u in down if u not in holders]
        reports.append(revoke(targets, signer, grant_id, min(threshold, len(targets)), timeout))
    return reports
