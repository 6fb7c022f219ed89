"""The proxy's HTTP API: the OpenAPI document and the checks on request bodies (pure).

Binary values travel as standard base64 strings; ids as text.  Every /v1 endpoint needs a
signed request (see proxy/auth.py); /health and /openapi.json do not.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

API_VERSION = "1"
MAX_BODY = 64 * 1024  # a grant is ~1 KiB, a public identity < 1 KiB
MAX_SHARES = 255
MAX_BATCH = 100  # capsules per POST /v1/reencrypt (an item is ~200 B of JSON: far below MAX_BODY)
GRANT_ID = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class BadRequest(Exception):
    """The body or a parameter is malformed (HTTP 400)."""


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body is not JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object")
    return obj


def field_str(obj: dict[str, Any], name: str, pattern: re.Pattern[str] | None = None, max_len: int = 8192) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or len(value) > max_len:
        raise BadRequest(f"field {name!r} must be a string")
    if pattern is not None and not pattern.match(value):
        raise BadRequest(f"field {name!r} is malformed")
    return value


def field_int(obj: dict[str, Any], name: str, low: int, high: int) -> int:
    value = obj.get(name)
    if type(value) is not int or not low <= value <= high:
        raise BadRequest(f"field {name!r} must be an integer in {low}..{high}")
    return value


def field_bytes(obj: dict[str, Any], name: str, length: int | None = None, max_len: int = 4096) -> bytes:
    text = field_str(obj, name, max_len=max_len * 2)
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadRequest(f"field {name!r} is not base64") from None
    if (length is not None and len(data) != length) or len(data) > max_len:
        raise BadRequest(f"field {name!r} has the wrong length")
    return data


MAX_SCOPE = 1000


def field_scope(obj: dict[str, Any]) -> tuple[str, ...]:
    """A guard's scope: a non-empty list of recipient fingerprints, or ["*"] for every recipient."""
    value = obj.get("scope")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SCOPE:
        raise BadRequest(f"field 'scope' must be a list of 1..{MAX_SCOPE} recipient fingerprints, or [\"*\"]")
    if value == ["*"]:
        return ("*",)
    if not all(isinstance(v, str) and FINGERPRINT.match(v) for v in value):
        raise BadRequest("field 'scope' must hold fingerprints (64 hex digits), or be [\"*\"] alone")
    return tuple(sorted(set(value)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_schema(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "byte", "description": description}


_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_AUTH_ERRORS = {
    "400": _ERROR,
    "401": {**_ERROR, "description": "unsigned, badly signed, unknown key, stale time or replayed nonce"},
    "403": {**_ERROR, "description": "the caller's role or relation to the grant does not allow this"},
    "413": {**_ERROR, "description": "body larger than the limit"},
}
_SIGNED = [{"umbrafsSignature": []}]
_ROLES = ("reader", "owner", "admin", "guard")
_SCOPE = {"type": "array", "items": {"type": "string", "pattern": r"^([0-9a-f]{64}|\*)$"},
          "minItems": 1, "maxItems": MAX_SCOPE}


def _json_body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _json_response(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def openapi() -> dict[str, Any]:
    """OpenAPI 3.0 description of the proxy, served at GET /openapi.json."""
    grant_id_param = {"name": "grant_id", "in": "path", "required": True,
                      "schema": {"type": "string", "pattern": GRANT_ID.pattern}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "umbrafs proxy",
            "version": API_VERSION,
            "description": (
                "Proxy re-encryption service of umbrafs (Umbral). Owners store one kfrag per grant; "
                "the grant's recipient asks for cfrags of a capsule; owners and admins revoke. "
                "The proxy never holds anything that decrypts data."
            ),
        },
        "components": {
            "securitySchemes": {
                "umbrafsSignature": {
                    "type": "apiKey", "in": "header", "name": "X-Umbrafs-Signature",
                    "description": (
                        "Ed25519 signature, base64, over 'umbrafs-proxy-request-v1\\n' + METHOD + '\\n' + "
                        "path-with-query + '\\n' + hex(sha256(body)) + '\\n' + time + '\\n' + nonce + '\\n' + key id; "
                        "with headers X-Umbrafs-Key (caller fingerprint), X-Umbrafs-Time (Unix seconds, within "
                        "±60 s of the proxy's clock) and X-Umbrafs-Nonce (16-64 of [A-Za-z0-9_-], single use)."
                    ),
                },
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "User": {"type": "object", "properties": {
                    "fingerprint": {"type": "string"}, "name": {"type": "string"},
                    "role": {"type": "string", "enum": list(_ROLES)},
                    "scope": {**_SCOPE, "description": "a guard's recipients (guards only)"}}},
                "RegisterRequest": {"type": "object", "required": ["identity", "role"], "properties": {
                    "identity": {"type": "string", "description": "public identity text (`umbrafs identity export`)"},
                    "role": {"type": "string", "enum": list(_ROLES), "description": (
                        "reader < owner < admin, each may do what the ones before may; a guard may only "
                        "revoke (and list and read) grants whose recipient is in its scope")},
                    "scope": {**_SCOPE, "description": "required for a guard, absent otherwise: recipient "
                                                       "fingerprints, or [\"*\"] for every recipient"}}},
                "GrantRequest": {"type": "object", "required": [
                    "grant_id", "owner", "recipient", "delegating_pk", "verifying_pk", "receiving_pk",
                    "threshold", "shares", "kfrag"], "properties": {
                    "grant_id": {"type": "string", "pattern": GRANT_ID.pattern},
                    "owner": {"type": "string", "description": "owner fingerprint (must be the caller)"},
                    "recipient": {"type": "string", "description": "recipient fingerprint (a registered user)"},
                    "delegating_pk": _b64_schema("owner's Umbral public key, 33 B compressed"),
                    "verifying_pk": _b64_schema("owner's kfrag-signing public key, 33 B"),
                    "receiving_pk": _b64_schema("recipient's Umbral public key, 33 B"),
                    "threshold": {"type": "integer", "minimum": 1, "maximum": MAX_SHARES},
                    "shares": {"type": "integer", "minimum": 1, "maximum": MAX_SHARES},
                    "kfrag": _b64_schema("the KeyFrag for this proxy; verified before it is stored")}},
                "Grant": {"type": "object", "properties": {
                    "grant_id": {"type": "string"}, "owner": {"type": "string"}, "recipient": {"type": "string"},
                    "threshold": {"type": "integer"}, "shares": {"type": "integer"},
                    "created": {"type": "number"}, "revoked": {"type": "number", "nullable": True},
                    "revoked_by": {"type": "string", "nullable": True}}},
                "GrantList": {"type": "object", "properties": {
                    "grants": {"type": "array", "items": {"$ref": "#/components/schemas/Grant"}}}},
                "ReencryptRequest": {"type": "object", "required": ["capsule"], "properties": {
                    "capsule": _b64_schema("Umbral capsule")}},
                "ReencryptResponse": {"type": "object", "properties": {
                    "cfrag": _b64_schema("CapsuleFrag; verify it (CapsuleFrag.verify) before use")}},
                "BatchReencryptRequest": {"type": "object", "required": ["items"], "properties": {
                    "items": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": {
                        "type": "object", "required": ["grant_id", "capsule"], "properties": {
                            "grant_id": {"type": "string", "pattern": GRANT_ID.pattern},
                            "capsule": _b64_schema("Umbral capsule")}}}}},
                "BatchReencryptResponse": {"type": "object", "properties": {
                    "results": {"type": "array", "description": "one per item, in order", "items": {
                        "type": "object", "properties": {
                            "grant_id": {"type": "string", "nullable": True},
                            "status": {"type": "integer", "description": "200, or 400/403/404/410 as the "
                                                                         "single endpoint would answer"},
                            "cfrag": _b64_schema("with status 200: the CapsuleFrag (verify before use)"),
                            "error": {"type": "string", "description": "otherwise: why"}}}}}},
                "RevokeResponse": {"type": "object", "properties": {
                    "grant_id": {"type": "string"}, "revoked": {"type": "boolean"},
                    "already": {"type": "boolean", "description": "it was revoked before this request"}}},
            },
        },
        "paths": {
            "/health": {"get": {"summary": "liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/openapi.json": {"get": {"summary": "this document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI document"}}}},
            "/v1/whoami": {"get": {"summary": "the caller as the proxy knows it", "security": _SIGNED,
                                   "responses": {"200": _json_response("the caller", "User"), **_AUTH_ERRORS}}},
            "/v1/users": {
                "post": {"summary": "register a user or change its role (admin)", "security": _SIGNED,
                         "requestBody": _json_body("RegisterRequest"),
                         "responses": {"201": _json_response("registered", "User"),
                                       "200": _json_response("updated or unchanged", "User"), **_AUTH_ERRORS}},
                "get": {"summary": "list users (admin)", "security": _SIGNED,
                        "responses": {"200": {"description": "users"}, **_AUTH_ERRORS}},
            },
            "/v1/grants": {
                "post": {"summary": "store a grant's kfrag (owner role; the caller must be the grant's owner)",
                         "security": _SIGNED, "requestBody": _json_body("GrantRequest"),
                         "responses": {"201": _json_response("stored", "Grant"),
                                       "200": _json_response("the same grant was stored before", "Grant"),
                                       "409": _ERROR, **_AUTH_ERRORS}},
                "get": {"summary": "list grants: admin all, guards those whose recipient is in scope, "
                                   "others those they own or receive",
                        "security": _SIGNED,
                        "parameters": [
                            {"name": "owner", "in": "query", "schema": {"type": "string"}},
                            {"name": "recipient", "in": "query", "schema": {"type": "string"}},
                            {"name": "active", "in": "query", "schema": {"type": "string", "enum": ["1", "0"]}}],
                        "responses": {"200": _json_response("grants", "GrantList"), **_AUTH_ERRORS}},
            },
            "/v1/grants/{grant_id}": {
                "get": {"summary": "one grant (owner, recipient, admin, or a guard of its recipient)",
                        "security": _SIGNED,
                        "parameters": [grant_id_param],
                        "responses": {"200": _json_response("the grant", "Grant"), "404": _ERROR, **_AUTH_ERRORS}},
                "delete": {"summary": "revoke: delete the kfrag (grant owner, admin, or a guard whose scope "
                                      "holds the grant's recipient; idempotent)",
                           "security": _SIGNED, "parameters": [grant_id_param],
                           "responses": {"200": _json_response("revoked", "RevokeResponse"), "404": _ERROR,
                                         **_AUTH_ERRORS}},
            },
            "/v1/reencrypt": {
                "post": {"summary": "re-encrypt several capsules of the caller's grants in one signed request "
                                   "(each item answers on its own; the caller must be each grant's recipient)",
                         "security": _SIGNED, "requestBody": _json_body("BatchReencryptRequest"),
                         "responses": {"200": _json_response("one result per item", "BatchReencryptResponse"),
                                       **_AUTH_ERRORS}},
            },
            "/v1/grants/{grant_id}/reencrypt": {
                "post": {"summary": "re-encrypt a capsule for the grant's recipient (the recipient only)",
                         "security": _SIGNED, "parameters": [grant_id_param],
                         "requestBody": _json_body("ReencryptRequest"),
                         "responses": {"200": _json_response("the cfrag", "ReencryptResponse"),
                                       "404": {**_ERROR, "description": "unknown grant"},
                                       "410": {**_ERROR, "description": "the grant was revoked"},
                                       **_AUTH_ERRORS}},
            },
        },
    }
