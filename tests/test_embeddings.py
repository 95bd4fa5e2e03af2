"""``POST /v1/embeddings`` through the official client and a real server: vectors, sizes, errors, usage."""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ijson
import openai
import pytest

from mockgpt.index.tokens import EMBEDDING_ENCODING, EmbeddingTokenizer, _backend
from mockgpt.testing import MockServer

from .conftest import BUSY, sharegpt
from .spec import validate

pytestmark = pytest.mark.sdk

CONVERSATIONS = [sharegpt("hello", ("human", "Hello!"), ("gpt", "Hi! How can I help?"))]
SMALL, LARGE, ADA = "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"
TEXT = "The food was delicious and the waiter..."

# Ten short documents on different topics, and for each a question that asks about it in other words,
# sharing some of its words.
DOCUMENTS = [
    "To bake sourdough bread, feed the starter, mix flour and water, let the dough rise overnight, and bake it in a hot Dutch oven.",
    "The Federal Reserve raised interest rates to slow inflation, and bond yields climbed while stock markets fell.",
    "Regular exercise such as running or swimming strengthens the heart and lowers blood pressure.",
    "A black hole forms when a massive star collapses, and not even light can escape its gravity.",
    "To repot a houseplant, choose a slightly larger pot, loosen the roots, add fresh soil, and water it well.",
    "Python's asyncio runs coroutines on an event loop, so one thread can wait on many network connections.",
    "The Roman Empire split into eastern and western halves, and the western empire fell in 476.",
    "Electric cars use lithium-ion batteries, and fast chargers can refill most of the battery in half an hour.",
    "Vaccines train the immune system to recognize a virus, so the body can fight the infection quickly.",
    "In chess, castling moves the king two squares toward a rook and puts the rook on the other side of the king.",
]
QUESTIONS = [
    "How long should sourdough dough rise before I bake the bread?",
    "Why do stock markets fall when interest rates go up?",
    "Does swimming lower my blood pressure?",
    "Can light escape from a black hole?",
    "What soil should I use when I repot my plant?",
    "How does the asyncio event loop handle many connections?",
    "When did the western Roman empire fall?",
    "How fast can an electric car battery charge?",
    "How do vaccines help the immune system fight a virus?",
    "How does castling move the king and the rook?",
]


def dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def norm(a: list[float]) -> float:
    return math.sqrt(dot(a, a))


def float32s(encoded: str) -> list[float]:
    """Little-endian float32s from base64, as the SDKs decode them."""
    found = array("f", base64.b64decode(encoded))
    assert found.itemsize == 4
    return found.tolist()


def vectors(client: openai.OpenAI, input: Any, **options: Any) -> list[list[float]]:
    return [item.embedding for item in client.embeddings.create(input=input, **{"model": SMALL, **options}).data]


def raw(server: MockServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/embeddings", json=body, headers=headers, timeout=30)


def test_base64_and_float_give_the_same_vectors(client: openai.OpenAI) -> None:
    texts = [TEXT, "¿Dónde está la estación de tren?", "naïve café 東京 🚀"]
    assert vectors(client, texts) == vectors(client, texts, encoding_format="float")


def test_the_sdk_asks_for_base64_and_gets_float32_little_endian(server: MockServer, client: openai.OpenAI) -> None:
    response = raw(server, {"input": TEXT, "model": SMALL, "encoding_format": "base64"})
    encoded = response.json()["data"][0]["embedding"]
    assert float32s(encoded) == vectors(client, TEXT)[0]


@pytest.mark.parametrize(("model", "size"), [(SMALL, 1536), (LARGE, 3072), (ADA, 1536)])
def test_each_model_has_its_size_and_unit_vectors(client: openai.OpenAI, model: str, size: int) -> None:
    response = client.embeddings.create(input=[TEXT, "a second text"], model=model)
    assert [len(item.embedding) for item in response.data] == [size, size]
    assert all(math.isclose(norm(item.embedding), 1.0, rel_tol=1e-5) for item in response.data)
    # The API names ada-002's second version in its answers.
    assert response.model == (model + "-v2" if model == ADA else model)


@pytest.mark.parametrize(("model", "dimensions"), [(SMALL, 256), (SMALL, 1024), (LARGE, 256), (LARGE, 1536), (SMALL, 1536)])
def test_dimensions_shorten_and_renormalize(client: openai.OpenAI, model: str, dimensions: int) -> None:
    full = vectors(client, TEXT, model=model)[0]
    short = vectors(client, TEXT, model=model, dimensions=dimensions)[0]
    assert len(short) == dimensions
    expected = [x / norm(full[:dimensions]) for x in full[:dimensions]]
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(short, expected, strict=True))
    assert math.isclose(norm(short), 1.0, rel_tol=1e-5)


def test_vectors_are_the_same_on_every_run_and_server(index: Path, client: openai.OpenAI) -> None:
    texts = [TEXT, "Hello!", "?!"]
    with MockServer(index, workers=2) as other, openai.OpenAI(base_url=other.base_url, api_key="x") as second:
        assert vectors(second, texts) == vectors(client, texts) == vectors(client, texts)


def test_a_batch_keeps_its_order(client: openai.OpenAI) -> None:
    response = client.embeddings.create(input=DOCUMENTS, model=SMALL)
    assert [item.index for item in response.data] == list(range(len(DOCUMENTS)))
    assert [item.embedding for item in response.data] == [vectors(client, text)[0] for text in DOCUMENTS]


def test_usage_counts_cl100k_tokens(client: openai.OpenAI) -> None:
    # The API reference's own example: this text is 8 tokens.
    assert client.embeddings.create(input=TEXT, model=ADA).usage.prompt_tokens == 8
    tokenizer = _backend(EMBEDDING_ENCODING)
    response = client.embeddings.create(input=DOCUMENTS, model=SMALL)
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(map(tokenizer.count, DOCUMENTS))


# Texts whose pre-tokenizing is easy to get wrong: runs of spaces and newlines, contractions in any case,
# long numbers, marks that combine, characters outside the BMP, and letters that change length in case.
AWKWARD = [
    " ", "   x", "a  b\n\n\n  c", "x\r\n\r\ny", "\t\tindented", "1234567", "THEY'LL I'M we'Ve", "e\u0301te",
    "\U0001f916 robots \U0001f600\U0001f600", "\u65e5\u672c\u8a9e\u306e\u6587", "\uff21\uff42\uff43", "\u0130stanbul stra\u00dfe", "\ufb01ne", "a" * 5000,
]


def real_texts(path: Path, count: int) -> Iterator[str]:
    """The first ``count`` messages of the real prefix, of every language and code."""
    with open(path, "rb") as file:
        for number, text in enumerate(ijson.items(file, "item.conversations.item.value")):
            if number == count:
                return
            yield text


def test_texts_are_tokenized_as_cl100k_base(sharegpt_path: Path) -> None:
    tokenizer, reference = EmbeddingTokenizer(), _backend(EMBEDDING_ENCODING)

    def encoded(text: str, limit: int) -> list[int] | None:
        ids = tokenizer.encode(text, limit)
        return None if ids is None else ids.tolist()

    for text in [*AWKWARD, *real_texts(sharegpt_path, 3000)]:
        assert encoded(text, 1 << 20) == reference.encode(text), text[:80]
    # At the limit and one over it, for a text longer than the limit in characters and for one shorter.
    for text in ["word " * 10, "\u65e5\u672c\u8a9e\u306e\u6587" * 3]:
        ids = reference.encode(text)
        assert encoded(text, len(ids)) == ids
        assert encoded(text, len(ids) - 1) is None


def test_token_arrays_embed_as_the_text_they_spell(client: openai.OpenAI) -> None:
    tokenizer = _backend(EMBEDDING_ENCODING)
    ids = [tokenizer.encode(text) for text in DOCUMENTS[:3]]
    response = client.embeddings.create(input=ids, model=SMALL)
    assert [item.embedding for item in response.data] == vectors(client, DOCUMENTS[:3])
    assert response.usage.prompt_tokens == sum(map(len, ids))
    # One array of ids is one input.
    assert vectors(client, ids[0]) == vectors(client, DOCUMENTS[0])


def test_retrieval_finds_the_document_a_question_paraphrases(client: openai.OpenAI) -> None:
    documents = vectors(client, DOCUMENTS)
    for number, question in enumerate(vectors(client, QUESTIONS)):
        scores = [dot(question, document) for document in documents]
        assert scores.index(max(scores)) == number, (QUESTIONS[number], scores)


def test_texts_that_share_words_are_closer_than_texts_that_share_none(client: openai.OpenAI) -> None:
    cat, mat, market = vectors(client, ["the cat sat on the mat", "a cat sat on a mat", "bond yields climbed"])
    assert dot(cat, mat) > 0.5 > abs(dot(cat, market))
    # Character trigrams: a word's forms lie close.
    cook, cooking, chess = vectors(client, ["Tonight we cook", "Tonight: cooking", "Tonight: chess"])
    assert dot(cook, cooking) > dot(cook, chess) + 0.1


INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."


@pytest.mark.parametrize(
    ("body", "status", "message", "param", "code"),
    [
        ({"input": ""}, 400, INVALID_INPUT, None, None),
        ({"input": []}, 400, INVALID_INPUT, None, None),
        ({"input": ["a", ""]}, 400, INVALID_INPUT, None, None),
        ({"input": [[1, 2], []]}, 400, INVALID_INPUT, None, None),
        ({"input": ["a", [1, 2]]}, 400, INVALID_INPUT, None, None),
        ({"input": ["a", 1]}, 400, INVALID_INPUT, None, None),
        ({"input": [True]}, 400, INVALID_INPUT, None, None),
        ({"input": ["a"] * 2049}, 400, INVALID_INPUT, None, None),
        ({"input": "word " * 8193}, 400, "Invalid 'input': maximum context length is 8192 tokens.", None, None),
        ({"input": [[1] * 8193]}, 400, "Invalid 'input': maximum context length is 8192 tokens.", None, None),
        ({"input": [[1, 100256]]}, 400, "Invalid 'input[0]': it holds a token id that is not one of the model's.", "input", None),
        ({"input": [[-1]]}, 400, "Invalid 'input[0]': it holds a token id that is not one of the model's.", "input", None),
        ({"input": 5}, 400, "Invalid value for 'input': Expected `str | array`, got `int`.", "input", None),
        ({"input": "x", "model": "gpt-4o"}, 404, "The model `gpt-4o` does not exist or you do not have access to it.", None, "model_not_found"),
        ({"input": "x", "model": ADA, "dimensions": 512}, 400, "This model does not support specifying dimensions.", None, None),
        (
            {"input": "x", "dimensions": 0}, 400,
            "Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got 0 instead.",
            "dimensions", "integer_below_min_value",
        ),
        (
            {"input": "x", "dimensions": 1537}, 400,
            "Invalid 'dimensions': integer above maximum value. Expected a value <= 1536, but got 1537 instead.",
            "dimensions", "integer_above_max_value",
        ),
        ({"input": "x", "encoding_format": "binary"}, 400, "Invalid value for 'encoding_format': Invalid enum value 'binary'.", "encoding_format", None),
        ({"input": "x", "user": 7}, 400, "Invalid value for 'user': Expected `str | null`, got `int`.", "user", None),
        ({"model": SMALL}, 400, "Missing required parameter: 'input'.", "input", "missing_required_parameter"),
    ],
)
def test_errors_as_the_api_words_them(
    server: MockServer, body: dict[str, Any], status: int, message: str, param: str | None, code: str | None
) -> None:
    response = raw(server, {"model": SMALL, **body})
    assert response.status_code == status
    validate("ErrorResponse", response.json())
    error = response.json()["error"]
    assert (error["message"], error["type"], error["param"], error["code"]) == (message, "invalid_request_error", param, code)


def test_more_than_300000_tokens_in_all(server: MockServer) -> None:
    text = "word " * 8000
    inputs = [text] * (300_000 // _backend(EMBEDDING_ENCODING).count(text) + 1)
    tokens = _backend(EMBEDDING_ENCODING).count(text) * len(inputs)
    response = raw(server, {"model": SMALL, "input": inputs})
    assert response.status_code == 400
    validate("ErrorResponse", response.json())
    assert response.json()["error"] == {
        "message": f"Requested {tokens} tokens, max 300000 tokens per request", "type": "max_tokens_per_request",
        "param": None, "code": "max_tokens_per_request",
    }


def test_sdk_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not support specifying dimensions"):
        client.embeddings.create(input="x", model=ADA, dimensions=256)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.embeddings.create(input="x", model="text-embedding-4")


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
@pytest.mark.parametrize("input", [TEXT, DOCUMENTS[:3], [[15339, 1917]]])
def test_responses_follow_the_spec(server: MockServer, encoding_format: str, input: Any) -> None:
    request = {"input": input, "model": SMALL, "encoding_format": encoding_format}
    validate("CreateEmbeddingRequest", request)
    body = raw(server, request).json()
    if encoding_format == "base64":
        # The spec types the vector as floats; base64 is their bytes, which the SDKs decode.
        for item in body["data"]:
            assert isinstance(item["embedding"], str)
            item["embedding"] = float32s(item["embedding"])
    validate("CreateEmbeddingResponse", body)


@pytest.fixture(scope="module")
def busy_server(index: Path) -> Iterator[MockServer]:
    with MockServer(index, **{**BUSY, "tpm": 10_000}) as server:
        yield server


def test_a_busy_server_charges_the_input_tokens(busy_server: MockServer) -> None:
    key = {"authorization": "Bearer tokens-charged"}
    first, second = (raw(busy_server, {"input": DOCUMENTS, "model": SMALL}, **key) for _ in range(2))
    tokens = first.json()["usage"]["prompt_tokens"]
    remaining = [int(response.headers["x-ratelimit-remaining-tokens"]) for response in (first, second)]
    assert remaining[0] == 10_000 - tokens
    # Refilled at 10,000 tokens a minute meanwhile.
    assert 0 <= remaining[1] - (remaining[0] - tokens) <= 50


def test_a_busy_server_counts_embeddings_as_hits_and_errors(busy_server: MockServer) -> None:
    raw(busy_server, {"input": "count me", "model": SMALL})
    raw(busy_server, {"input": "x", "model": "no-such-model"})
    metrics = httpx.get(f"{busy_server.url}/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("mockgpt_requests_total{") and 'route="/embeddings"' in line]
    assert any('outcome="hit"' in line for line in counted)
    assert any('status="404"' in line and 'outcome="error"' in line for line in counted)
    assert not any('outcome="miss"' in line for line in counted)


def test_faults_by_header_apply(server: MockServer, client: openai.OpenAI) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=2) as retrying:
        response = retrying.embeddings.with_raw_response.create(
            input=TEXT, model=SMALL, extra_headers={"x-mockgpt-fault": "500,500,ok", "x-mockgpt-fault-key": "embeddings-retried"}
        )
    assert response.retries_taken == 2
    assert response.parse().data[0].embedding == vectors(client, TEXT)[0]
