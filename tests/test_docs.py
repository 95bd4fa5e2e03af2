"""The OpenAPI schema describes the real types, and /docs works with no network."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from mockgpt.testing import MockServer

from .test_server import CONVERSATIONS  # noqa: F401  (the module's conversations, which conftest indexes)


@pytest.fixture(scope="module")
def http(server: MockServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url) as client:
        yield client


def test_schema_has_every_route_with_its_types(http: httpx.Client) -> None:
    schema = http.get("/docs/openapi.json").json()
    for prefix in ["/v1", ""]:
        assert {f"{prefix}/chat/completions", f"{prefix}/completions", f"{prefix}/models", f"{prefix}/models/{{model_id}}"} <= set(schema["paths"])
        chat = schema["paths"][f"{prefix}/chat/completions"]["post"]
        assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
        assert chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
        assert chat["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(request["required"])
    assert {"stream", "n", "seed", "max_tokens", "max_completion_tokens", "stop", "stream_options"} <= set(request["properties"])


def test_docs_page_loads_only_local_assets(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert len(assets) >= 3
    for asset in assets:
        assert asset.startswith("/"), asset
        response = http.get(asset)
        assert response.status_code == 200 and len(response.content) > 500, asset
