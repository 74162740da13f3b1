"""A real S3 API for the tests: moto's server on 127.0.0.1, with a log of every request.

The server is moto's own WSGI app (the one ``moto_server`` and ``ThreadedMotoServer`` run)
served by werkzeug in a thread of the test process, wrapped so that every HTTP request
is recorded: method, bucket, key, query, the access key id it was signed with and any
copy source. Clients in other processes (Ray workers, ``deid run`` subprocesses) reach
it over TCP like any S3 endpoint, and their requests land in the same log.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import unquote

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

REGION = "us-east-1"
_CRED = re.compile(r"Credential=([^/,\s]+)/")


@dataclass(frozen=True)
class S3Request:
    method: str
    bucket: str
    key: str
    query: str
    access_key: str | None
    copy_source: str | None

    @property
    def writes(self) -> bool:
        return self.method in ("PUT", "POST", "DELETE")


class MotoS3:
    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.requests: list[S3Request] = []
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def recording_app(environ, start_response):
            path = unquote(environ.get("PATH_INFO", "")).lstrip("/")
            bucket, _, key = path.partition("/")
            m = _CRED.search(environ.get("HTTP_AUTHORIZATION", ""))
            req = S3Request(environ["REQUEST_METHOD"], bucket, key, environ.get("QUERY_STRING", ""),
                            m.group(1) if m else None, environ.get("HTTP_X_AMZ_COPY_SOURCE"))
            with self._lock:
                self.requests.append(req)
            return app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, recording_app, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def client(self, key: str = "admin"):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key="moto-secret")

    def storage_options(self, key: str = "manifest-key") -> dict:
        """What a manifest's ``storage_options`` holds for this endpoint (s3fs keywords)."""
        return {"key": key, "secret": "moto-secret", "endpoint_url": self.endpoint,
                "client_kwargs": {"region_name": REGION}}

    def env(self, key: str = "env-key") -> dict:
        """The standard AWS environment variables for this endpoint."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": "moto-secret", "AWS_DEFAULT_REGION": REGION}

    def new_bucket(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_tree(self, local_root, bucket: str, prefix: str) -> None:
        c = self.client()
        for p in sorted(local_root.rglob("*")):
            if p.is_file():
                c.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local_root).as_posix()}")

    def objects(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """key -> ETag of every object under ``prefix``."""
        out: dict[str, str] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        return out

    def mark(self) -> int:
        with self._lock:
            return len(self.requests)

    def since(self, mark: int) -> list[S3Request]:
        with self._lock:
            return list(self.requests[mark:])

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(10)
