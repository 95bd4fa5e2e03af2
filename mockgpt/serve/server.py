"""Running the app: which index to serve, binding the socket, uvicorn and its workers."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from uvicorn.supervisors import Multiprocess
from xxhash import xxh3_64_hexdigest

from mockgpt.errors import IndexFormatError, MockGPTError
from mockgpt.index.reader import Index
from mockgpt.serve import metrics
from mockgpt.serve.coordinator import Coordinator
from mockgpt.serve.service import Settings

__all__ = ["Progress", "demo_index", "resolve_index", "serve"]

DATASET_SUFFIXES = (".json", ".jsonl")

Progress = Callable[[Path, Path], AbstractContextManager[Callable[[int], None]]]
"""Called with a dataset and the index about to be built from it: a context around the build that
yields its ``on_progress(bytes_read)``; the context closes once the index is written or the build failed."""


def resolve_index(
    index: str | os.PathLike[str] | None, *, progress: Progress | None = None, record: str | os.PathLike[str] | None = None
) -> Path:
    """The index file to serve: ``index``, else ``$MOCKGPT_INDEX``, else the bundled demo.

    A dataset (``.json``/``.jsonl``) is indexed first into ``.mgpt`` beside it, and again whenever it
    changes, reporting through ``progress``. The ``record`` file answers are appended to may be that
    dataset: it is then OpenAI chat JSONL, and may hold no conversation yet.
    """
    index = index or os.environ.get("MOCKGPT_INDEX") or None
    if index is None:
        return demo_index()
    path = Path(index)
    if path.suffix in DATASET_SUFFIXES:
        recording = record is not None and path.resolve() == Path(record).resolve()
        return cached_index(path, path.with_suffix(".mgpt"), progress=progress, recording=recording)
    return path


def demo_index() -> Path:
    """The bundled demo conversations, indexed once into the user's cache directory."""
    source = resources.files("mockgpt") / "demo" / "conversations.json"
    with resources.as_file(source) as path:
        version = xxh3_64_hexdigest(path.read_bytes())
        return cached_index(path, _cache_directory() / f"demo-{version}.mgpt")


def cached_index(source: Path, target: Path, *, progress: Progress | None = None, recording: bool = False) -> Path:
    """``target``, built from ``source`` unless it is newer than ``source`` and readable; ``recording``
    builds it from an OpenAI chat JSONL record file, possibly empty."""
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        try:
            Index(target).close()
            return target
        except IndexFormatError:
            pass
    from mockgpt.index.build import build

    target.parent.mkdir(parents=True, exist_ok=True)
    reporting: AbstractContextManager[Callable[[int], None] | None] = (
        nullcontext() if progress is None else progress(source, target)
    )
    with reporting as on_progress:
        build([source], target, on_progress=on_progress, format="openai-jsonl" if recording else None, allow_empty=recording)
    return target


def _cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mockgpt"


def serve(
    index: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "warning",
    on_ready: Callable[[str, Index], None] | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> None:
    """Serve the OpenAI API from ``index`` until interrupted; port 0 binds any free port.

    ``settings`` are the fields of ``Settings`` but ``index``: ``api_key``, ``ttft_ms``, ``rpm``, ...
    ``on_ready`` gets the base URL (``http://HOST:PORT/v1``) and the open index once the socket is bound;
    ``progress`` reports the indexing of a dataset first (see ``Progress``). ``upstream`` and ``record``
    go together: misses are answered by the upstream and appended to the record file (see ``record``).
    ``state``, a ``redis://`` URL, shares rate-limit budgets and fault counters with the other servers
    that name it; it must answer before the server starts.
    """
    record = _record_file(settings)
    path = resolve_index(index, progress=progress, record=record)
    options = Settings(index=str(path.resolve()), workers=workers, **settings)
    if options.state:
        _reach(options.state)
    with tempfile.TemporaryDirectory(prefix="mockgpt-") as run:
        if options.metrics:
            metrics.prepare(Path(run) / "metrics")
        # Several workers keep what must hold server-wide (limits, fault keys) in one coordinator, here.
        coordinator = Coordinator(options.limits, str(Path(run) / "shared.sock")) if workers > 1 else None
        if coordinator is not None:
            coordinator.start()
            options = msgspec.structs.replace(options, coordinator=coordinator.path)
        try:
            _run(options, host, port, workers, log_level, on_ready)
        finally:
            if coordinator is not None:
                coordinator.stop()


def _reach(url: str) -> None:
    """Fail now, in one line, unless the Redis of ``--state`` answers: before any worker starts."""
    try:
        from mockgpt.serve import redis_state
    except ModuleNotFoundError as error:
        if error.name != "redis":
            raise
        raise MockGPTError("--state needs the redis client: pip install 'mockgpt[redis]'") from None
    redis_state.check(url)


def _record_file(settings: dict[str, Any]) -> str | None:
    """The record file, absolute and created now: a path that cannot be written fails here rather than
    in a worker, and a new dataset to record into exists to be indexed. The upstream key goes only
    where there is an upstream."""
    upstream, record = settings.get("upstream"), settings.get("record")
    if bool(upstream) != bool(record):
        raise MockGPTError("--upstream and --record go together: misses are answered upstream and recorded")
    if not record:
        settings["upstream_api_key"] = None
        return None
    settings["record"] = record = os.path.abspath(record)
    # Opened to append, which leaves its modification time, and so its index, as they are.
    open(record, "ab").close()
    return str(record)


def _run(
    settings: Settings, host: str, port: int, workers: int, log_level: str, on_ready: Callable[[str, Index], None] | None
) -> None:
    # Workers build their app from the environment (uvicorn needs an import string for several workers).
    os.environ.update(settings.to_env())
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    with Index(settings.index) as opened:
        if on_ready is not None:
            on_ready(f"http://{host if ':' not in host else f'[{host}]'}:{port}/v1", opened)
    config = uvicorn.Config(
        "mockgpt.serve.app:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level, access_log=False
    )
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening now, before uvicorn starts, lets clients connect as soon as the address is printed.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
