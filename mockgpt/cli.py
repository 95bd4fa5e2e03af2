"""The ``mockgpt`` command: ``index``, ``lookup``, ``serve`` and ``export-requests``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import click
import msgspec
from click.core import ParameterSource

from mockgpt.errors import DatasetError, MockGPTError
from mockgpt.index import canonical

__all__ = ["main"]


class _Commands(click.Group):
    """``mockgpt``'s commands: a usage error is told in one line, as every other error is."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line():
            return super().invoke(ctx)


@contextmanager
def _one_line() -> Iterator[None]:
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.UsageError as error:
        # Without its context it leaves out the usage and the hint, and shows only "Error: ...", which
        # names the option; --help is where it always is.
        error.ctx = None
        raise


@click.group(cls=_Commands)
@click.version_option(package_name="mockgpt")
def main() -> None:
    """A mock of the OpenAI API that replays recorded conversations."""


def default_output(source: str) -> str:
    """``data/x.json`` -> ``data/x.mgpt``."""
    return str(Path(source).with_suffix(".mgpt"))


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Index file.  [default: first SOURCE with suffix .mgpt]")
@click.option("--format", "format", type=click.Choice(["sharegpt", "sharegpt-jsonl", "openai-jsonl"]), help="Dataset format.  [default: detected]")
@click.option("--partial", is_flag=True, help="Index the complete conversations before invalid JSON instead of failing.")
@click.option("--jobs", type=click.IntRange(min=0), help="Tokenizer processes; 0 tokenizes in the main one.  [default: cores - 1, 0 for small input]")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary.")
def index(sources: tuple[str, ...], output: str | None, format: str | None, partial: bool, jobs: int | None, quiet: bool) -> None:
    """Index the conversations of SOURCE... into one index file."""
    from mockgpt.index.build import build

    output = output or default_output(sources[0])
    with _progress(_size(sources), "indexing", quiet=quiet) as on_progress:
        try:
            stats = build(
                sources, output, format=format, partial=partial, jobs=jobs,
                on_progress=on_progress, on_warning=lambda message: click.echo(f"warning: {message}", err=True),
            )
        except MockGPTError as error:
            raise _failure(error, "--partial") from None
    if quiet:
        return
    skipped = sum(stats.skipped.values())
    click.echo(f"{output}: {stats.read:,} conversations read: {stats.indexed:,} indexed, {skipped:,} skipped")
    click.echo(f"  {stats.answers:,} answers (assistant turns) under {stats.keys:,} keys, {stats.several_answers:,} of them with several answers")
    for reason, count in sorted(stats.skipped.items()):
        click.echo(f"  skipped: {count:,} {reason}")
    if stats.skipped_ids:
        click.echo(f"  first skipped conversations: {', '.join(stats.skipped_ids)}")
    if stats.assistant_openers:
        click.echo(f"  not indexed: the opening assistant turn of {stats.assistant_openers:,} conversations, with nothing before it")
    rate = stats.bytes_read / 1e6 / stats.seconds if stats.seconds else 0.0
    click.echo(f"  {stats.seconds:.1f} s, {rate:.1f} MB/s")


@contextmanager
def _progress(total: int, label: str, *, quiet: bool = False, heading: str | None = None) -> Iterator[Callable[[int], None]]:
    """A bar on stderr for work on ``total`` bytes, yielding its ``on_progress(bytes_done)``.

    Drawn, after a ``heading`` line if given, only on a terminal and without ``quiet``: a log or a pipe
    gets nothing. The bar ends its line when the block exits, also on an error, so that the error's
    message starts a line of its own.
    """
    shown = not quiet and sys.stderr.isatty()
    if shown and heading:
        click.echo(heading, err=True)
    with click.progressbar(length=total, label=label, file=sys.stderr, hidden=not shown) as bar:
        def on_progress(done: int) -> None:
            bar.update(done - bar.pos)

        yield on_progress


def _size(sources: tuple[str, ...]) -> int:
    return sum(os.path.getsize(source) for source in sources)


class _Request(msgspec.Struct):
    messages: list[canonical.Message]


@main.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False))
@click.argument("request", type=click.File("rb"), default="-")
def lookup(index_path: str, request: Any) -> None:
    """Look a chat completion REQUEST (JSON file or -, a body or a list of messages) up in INDEX.

    Prints the canonical messages, the key, and the recorded answers; exits 1 on a miss.
    """
    from mockgpt.index.reader import Index

    body = request.read()
    try:
        messages = _request_messages(body)
        said = [(canonical.ROLES[m.role], canonical.text_of(m.content), canonical.calls_of(m)) for m in messages]
    except (msgspec.DecodeError, KeyError) as error:
        name = getattr(request, "name", "-")
        raise click.ClickException(f"{name}: not a chat completion request: {error}") from None
    framed = canonical.frame(said)
    for role, text, calls in said:
        click.echo(f"{role:>9}: {canonical.normalize(text)!r}")
        for call in calls:
            click.echo(f"{'':>9}  calls {call.name}({canonical.arguments(call.arguments)})")
    click.echo(f"key: {canonical.digest(framed).hex()}")
    try:
        with Index(index_path) as index:
            answers = index.lookup(said)
    except MockGPTError as error:
        raise click.ClickException(str(error)) from None
    if not answers:
        click.echo("miss")
        sys.exit(1)
    for number, answer in enumerate(answers):
        click.echo(
            f"answer {number}: conversation {answer.conversation_id}, turn {answer.turn},"
            f" {answer.prompt_tokens} prompt + {answer.completion_tokens} completion tokens"
        )
        click.echo(answer.text)
        for stored in answer.tool_calls:
            click.echo(f"tool call {stored.id}: {stored.name}({stored.arguments})")


def _request_messages(body: bytes) -> list[canonical.Message]:
    if body.lstrip().startswith(b"["):
        return msgspec.json.decode(body, type=list[canonical.Message])
    return msgspec.json.decode(body, type=_Request).messages


@main.command()
@click.option("--index", "index_path", envvar="MOCKGPT_INDEX", help="Index file, or a dataset (.json/.jsonl) to index first.  [default: the bundled demo]")
@click.option("--host", envvar="MOCKGPT_HOST", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", envvar="MOCKGPT_PORT", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind; 0 for any free port.")
@click.option("--workers", envvar="MOCKGPT_WORKERS", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes, sharing the one mapped index.")
@click.option("--api-key", envvar="MOCKGPT_API_KEY", help="Require this bearer token.  [default: none required]")
@click.option("--max-body", envvar="MOCKGPT_MAX_BODY", default=32 << 20, show_default=True, type=click.IntRange(min=1), help="Largest request body in bytes.")
@click.option("--deterministic", envvar="MOCKGPT_DETERMINISTIC", is_flag=True, help="Derive ids and created times from the request and the answer.")
@click.option("--ignore-system", envvar="MOCKGPT_IGNORE_SYSTEM", is_flag=True, help="Leave system and developer messages out of the key.")
@click.option("--log-level", envvar="MOCKGPT_LOG_LEVEL", default="warning", show_default=True, type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn's log level.")
@click.option("--ttft-ms", envvar="MOCKGPT_TTFT_MS", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Time to first token, in ms.")
@click.option("--itl-ms", envvar="MOCKGPT_ITL_MS", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Time between streamed tokens, in ms.")
@click.option("--tokens-per-second", envvar="MOCKGPT_TOKENS_PER_SECOND", type=click.FloatRange(min=0, min_open=True), help="The same as --itl-ms 1000/N.")
@click.option("--prefill-ms-per-1k", envvar="MOCKGPT_PREFILL_MS_PER_1K", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Time to first token added per 1,000 prompt tokens, in ms.")
@click.option("--jitter", envvar="MOCKGPT_JITTER", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Spread every wait by up to this share of itself.")
@click.option("--seed", envvar="MOCKGPT_SEED", type=int, help="Seed of jitter and random faults, to repeat a run.  [default: random]")
@click.option("--max-concurrency", envvar="MOCKGPT_MAX_CONCURRENCY", type=click.IntRange(min=1), help="Answers in progress at once, server-wide; later requests wait in order.  [default: no limit]")
@click.option("--slowdown", envvar="MOCKGPT_SLOWDOWN", default=1.0, show_default=True, type=click.FloatRange(min=1), help="How much slower a token comes with --max-concurrency answers running than with one, as a batching engine slows down; linear in between.")
@click.option("--max-queue", envvar="MOCKGPT_MAX_QUEUE", type=click.IntRange(min=0), help="Requests waiting for an answer slot before more are turned away.  [default: no limit]")
@click.option("--overload-status", envvar="MOCKGPT_OVERLOAD_STATUS", default="429", show_default=True, type=click.Choice(["429", "503"]), help="Status of a request turned away by --max-queue.")
@click.option("--rpm", envvar="MOCKGPT_RPM", type=click.IntRange(min=1), help="Requests per minute per API key, server-wide.  [default: no limit]")
@click.option("--tpm", envvar="MOCKGPT_TPM", type=click.IntRange(min=1), help="Tokens per minute per API key (prompt + max_tokens or the answer), server-wide.  [default: no limit]")
@click.option("--fault-rate", envvar="MOCKGPT_FAULT_RATE", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Share of requests that fail at random.")
@click.option("--fault-status", envvar="MOCKGPT_FAULT_STATUS", default="429,500,503", show_default=True, help="Statuses random faults draw from, comma-separated.")
@click.option("--state", envvar="MOCKGPT_STATE", metavar="redis://HOST:PORT/DB", help="Keep the rate-limit budgets and fault-plan counters in this Redis, shared by every replica that names it (needs mockgpt[redis]).  [default: this server's own]")
@click.option("--misses", envvar="MOCKGPT_MISSES", default="404", show_default=True, type=click.Choice(["404", "synthesize"]), help="A request the index does not hold: the 404, or a recorded answer drawn by the request's digest (the same request, the same answer), for benchmark tools' own prompts.")
@click.option("--metrics", envvar="MOCKGPT_METRICS", is_flag=True, help="Count and time requests; GET /metrics serves Prometheus text, vLLM's metrics among it.")
@click.option("--served-model-name", envvar="MOCKGPT_SERVED_MODEL_NAME", default="mockgpt", show_default=True, help="The model_name label of vLLM's metrics.")
@click.option("--kv-cache-tokens", envvar="MOCKGPT_KV_CACHE_TOKENS", default=1 << 20, show_default=True, type=click.IntRange(min=1), help="The KV cache that vllm:kv_cache_usage_perc measures the tokens of running and waiting requests against.")
@click.option("--prompt-cache", envvar="MOCKGPT_PROMPT_CACHE", is_flag=True, help="Cache prompt prefixes as OpenAI does: a prompt that begins as one sent lately did reports the tokens in common (1,024 or more, in steps of 128) as cached, and --prefill-ms-per-1k charges only the others.")
@click.option("--prompt-cache-size", envvar="MOCKGPT_PROMPT_CACHE_SIZE", default=65_536, show_default=True, type=click.IntRange(min=1), help="Prompt prefixes --prompt-cache remembers, server-wide (about 160 bytes each); the least recently used are forgotten first.")
@click.option("--upstream", envvar="MOCKGPT_UPSTREAM", help="Base URL of an OpenAI-compatible API (https://api.openai.com/v1) that answers the chat completions the index lacks, and Anthropic-compatible for the Messages API's (POST {URL}/messages); with --record.  [default: none, a miss is a 404]")
@click.option("--record", envvar="MOCKGPT_RECORD", type=click.Path(dir_okay=False), help="OpenAI chat JSONL file that --upstream's answers are appended to; serve it with --index to replay them on the next start.")
@click.option("--upstream-api-key", envvar=["MOCKGPT_UPSTREAM_API_KEY", "OPENAI_API_KEY"], help="Key sent to --upstream: as a Bearer token for chat completions, as x-api-key for messages.  [default: $OPENAI_API_KEY for chat completions, $ANTHROPIC_API_KEY for messages]")
def serve(
    index_path: str | None, host: str, port: int, workers: int, log_level: str, tokens_per_second: float | None,
    overload_status: str, fault_status: str, **options: Any,
) -> None:
    """Serve the OpenAI API from an index."""
    from mockgpt.index.reader import Index
    from mockgpt.serve.server import serve as run

    def ready(base_url: str, index: Index) -> None:
        click.echo(f"mockgpt: serving {index.path} ({index.header.answers:,} answers) on {base_url}")
        sys.stdout.flush()

    # A key given for the upstream is its key whichever API it answers; else each API's own variable.
    given = click.get_current_context().get_parameter_source("upstream_api_key") is ParameterSource.COMMANDLINE
    given = given or bool(os.environ.get("MOCKGPT_UPSTREAM_API_KEY"))
    options["upstream_anthropic_api_key"] = options["upstream_api_key"] if given else os.environ.get("ANTHROPIC_API_KEY")
    if tokens_per_second:
        if options["itl_ms"]:
            raise click.UsageError("give --itl-ms or --tokens-per-second, not both")
        options["itl_ms"] = 1000 / tokens_per_second
    if options["max_concurrency"] is None:
        for name, given in [
            ("--max-queue", options["max_queue"] is not None), ("--overload-status", overload_status != "429"),
            ("--slowdown", options["slowdown"] != 1),
        ]:
            if given:
                raise click.UsageError(f"{name} needs --max-concurrency: without it no request waits")
    if not options["prompt_cache"] and click.get_current_context().get_parameter_source("prompt_cache_size") is not ParameterSource.DEFAULT:
        raise click.UsageError("--prompt-cache-size needs --prompt-cache")
    try:
        statuses = [int(status) for status in fault_status.split(",")]
    except ValueError:
        statuses = []
    if not statuses or not all(400 <= status <= 599 for status in statuses):
        raise click.BadParameter(f"{fault_status!r} is not a list of statuses from 400 to 599", param_hint="--fault-status")
    try:
        run(
            index_path, host=host, port=port, workers=workers, log_level=log_level, on_ready=ready, progress=_indexing,
            overload_status=int(overload_status), fault_status=statuses, **options,
        )
    except (MockGPTError, OSError) as error:
        raise _failure(error, "`mockgpt index --partial`") from None


def _indexing(source: Path, target: Path) -> AbstractContextManager[Callable[[int], None]]:
    """``serve``'s progress while it indexes a dataset before serving."""
    return _progress(source.stat().st_size, "indexing", heading=f"mockgpt: indexing {source} into {target}")


def _failure(error: Exception, partial: str) -> click.ClickException:
    """``error`` as one line; a dataset cut off mid-way also says that ``partial`` indexes what is complete."""
    if isinstance(error, DatasetError) and error.offset is not None:
        return click.ClickException(f"{error}; {partial} indexes the complete conversations before it")
    return click.ClickException(str(error))


@main.command("export-requests")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Request set to write (JSONL).")
@click.option("-n", "count", type=click.IntRange(min=1), help="Draw this many requests (with --walk: conversations) at random.  [default: all, in dataset order]")
@click.option("--seed", default=0, show_default=True, help="Seed of the random draw.")
@click.option("--format", "format", type=click.Choice(["openai", "vllm"]), default="openai", show_default=True, help="openai: chat completion bodies; vllm: vLLM's custom benchmark dataset (one-message prompts).")
@click.option("--walk", is_flag=True, help="Each conversation's turns in order, every request carrying the recorded answers before it.")
@click.option("--model", default="gpt-4o", show_default=True, help="The model named in each request.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary.")
def export_requests(
    sources: tuple[str, ...], output: str, count: int | None, seed: int, format: str, walk: bool, model: str, quiet: bool
) -> None:
    """Write requests that hit an index built from SOURCE..., for load tools."""
    from mockgpt.testing.export import export

    with _progress(_size(sources), "exporting", quiet=quiet) as on_progress:
        try:
            written = export(sources, output, n=count, seed=seed, format=format, walk=walk, model=model, on_progress=on_progress)
        except MockGPTError as error:
            raise click.ClickException(str(error)) from None
    if not quiet:
        click.echo(f"{output}: {written:,} requests")
