"""A contract test double of FAB's backend: an HTTP server on loopback that checks every request
against FAB's own OpenAPI document (tests/fab_openapi/openapi.json), answers as the document says,
and records what it was sent.

* a request whose method and path the document does not list, whose path parameters or JSON body do
  not validate against their schemas, or that lacks the bearer token an operation's ``security``
  asks for, is answered 400 and recorded as a violation (the test fails on any);
* a valid request is answered with the operation's documented success status and a body that
  validates against its documented response schema;
* ``POST /token`` stands for Keycloak's token endpoint (the OAuth client-credentials grant FAB's
  orchestrator uses; not part of the backend's document).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema

DOCUMENT = Path(__file__).resolve().parent / "fab_openapi" / "openapi.json"
TOKEN_PATH = "/token"


@dataclass
class Recorded:
    method: str
    path: str
    operation: str  # the document's path template, e.g. /submissions/{submission_ids}/statuses
    params: dict[str, Any]
    body: Any
    authorization: str | None
    at: float = field(default_factory=time.time)


@dataclass
class FabContractServer:
    client_id: str
    client_secret: str
    document: dict[str, Any] = field(default_factory=lambda: json.loads(DOCUMENT.read_text()))
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- serving
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    def start(self) -> "FabContractServer":
        contract = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body = contract.handle(self.command, self.path, dict(self.headers), raw)
                self._answer(status, body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------------------------ checking
    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        path = urlsplit(target).path
        headers = {k.lower(): v for k, v in headers.items()}
        if method == "POST" and path == TOKEN_PATH:
            return self._token(headers, raw)
        try:
            template, operation, params = self._match(method, path)
            body = self._check(operation, params, headers, raw)
        except ContractViolation as exc:
            self.violations.append(f"{method} {path}: {exc}")
            return 400, {"error": {"text": str(exc)}}
        self.requests.append(Recorded(method, path, template, params, body, headers.get("authorization")))
        return self._respond(operation, params, body)

    def _token(self, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = headers.get("authorization", "")
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials" or (client_id, secret) != (self.client_id,
                                                                                    self.client_secret):
            self.violations.append(f"token request refused: {form.get('grant_type')!r} for {client_id!r}")
            return 401, {"error": "invalid_client"}
        token = uuid.uuid4().hex
        self.tokens.append(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 300}

    def _match(self, method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        for template, item in self.document["paths"].items():
            pattern = "^" + re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
            found = re.match(pattern, path)
            if found and method.lower() in item:
                return template, item[method.lower()], found.groupdict()
        raise ContractViolation("no such operation in FAB's OpenAPI document")

    def _check(self, operation: dict[str, Any], params: dict[str, str], headers: dict[str, str],
               raw: bytes) -> Any:
        if operation.get("security"):
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                raise ContractViolation("no valid bearer token (the operation asks for oauth2)")
        for parameter in operation.get("parameters", []):
            if parameter["in"] != "path":
                continue
            value: Any = params[parameter["name"]]
            schema = parameter["schema"]
            if schema.get("type") == "array":  # simple style: comma-separated
                value = value.split(",")
            self._validate(value, schema, f"path parameter {parameter['name']}")
        content = operation.get("requestBody", {}).get("content", {})
        if not content:
            return None
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ContractViolation(f"content type {headers.get('content-type')!r}, expected application/json")
        try:
            body = json.loads(raw)
        except ValueError:
            raise ContractViolation("body is not JSON") from None
        self._validate(body, content["application/json"]["schema"], "request body")
        return body

    def _validate(self, value: Any, schema: dict[str, Any], what: str) -> None:
        checker = jsonschema.FormatChecker()

        @checker.checks("uuid", raises=ValueError)
        def is_uuid(text: object) -> bool:
            return not isinstance(text, str) or bool(uuid.UUID(text))

        full = {**schema, "components": self.document["components"]}
        try:
            jsonschema.validate(value, full, cls=jsonschema.Draft7Validator, format_checker=checker)
        except jsonschema.ValidationError as exc:
            raise ContractViolation(f"{what}: {exc.message}") from None

    def _respond(self, operation: dict[str, Any], params: dict[str, str], body: Any) -> tuple[int, Any]:
        status = min(int(code) for code in operation["responses"] if code.startswith("2"))
        answer: dict[str, Any] = {}
        if "submission_ids" in params and isinstance(body, dict) and "status" in body:
            answer["body"] = [{"submission_id": sid, "status": body["status"], "message": body.get("message", ""),
                               "timestamp": datetime.now(timezone.utc).isoformat()}
                              for sid in params["submission_ids"].split(",")]
        schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
        self._validate(answer, schema, "our own answer")
        return status, answer

    # -------------------------------------------------------------------------------------- reading
    def statuses(self, submission_id: str) -> list[dict[str, Any]]:
        return [r.body for r in self.requests
                if r.operation == "/submissions/{submission_ids}/statuses" and submission_id in r.path]

    def results(self, submission_id: str) -> list[Recorded]:
        return [r for r in self.requests if r.operation == "/results/submissions/{submission_id}/tests/{test_ids}"
                and r.params["submission_id"] == submission_id]

    def scores(self, submission_id: str) -> dict[str, dict[str, dict[str, float]]]:
        """test id -> scenario id -> scores, as posted."""
        posted: dict[str, dict[str, dict[str, float]]] = {}
        for r in self.results(submission_id):
            for row in r.body["data"]:
                posted.setdefault(r.params["test_ids"], {})[row["scenario_id"]] = row["scores"]
        return posted


class ContractViolation(Exception):
    pass
