"""``python -m mockgpt.index`` / ``mockgpt index``, ``lookup``, and the progress of ``index``, ``serve`` and
``export-requests``, as a user runs them."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import pytest
from click.testing import CliRunner

from mockgpt import Index
from mockgpt.cli import main
from mockgpt.testing import MockServer

from .conftest import sharegpt, write_sharegpt

GOOD = [
    sharegpt("a", ("human", "hi"), ("gpt", "Hello! How can I help?")),
    sharegpt("b", ("human", "hi"), ("gpt", "Hi there."), ("human", "Tell me a joke."), ("gpt", "No.")),
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mockgpt.index", *args], capture_output=True, text=True)


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.output


def test_index_writes_beside_the_source_by_default(tmp_path: Path) -> None:
    source = write_sharegpt(tmp_path / "chats.json", GOOD)
    result = run(str(source))
    assert result.returncode == 0, result.stderr
    assert "2 conversations read: 2 indexed, 0 skipped\n  3 answers (assistant turns) under 2 keys," in result.stdout
    assert "under 2 keys, 1 of them with several answers" in result.stdout
    with Index(tmp_path / "chats.mgpt") as index:
        assert [a.text for a in index.lookup([("user", "hi")])] == ["Hello! How can I help?", "Hi there."]


@pytest.fixture
def truncated(tmp_path: Path) -> Path:
    data = json.dumps(GOOD + [sharegpt("c", ("human", "cut"), ("gpt", "off here"))], indent=2)
    path = tmp_path / "cut.json"
    path.write_text(data[: data.index("off here") + 3])
    return path


def test_truncated_input_fails_and_leaves_the_index_alone(tmp_path: Path, truncated: Path) -> None:
    existing = tmp_path / "cut.mgpt"
    existing.write_bytes(b"the previous index")
    result = run(str(truncated))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert str(truncated) in line and f"byte {truncated.stat().st_size}" in line and "--partial" in line
    assert existing.read_bytes() == b"the previous index"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.json", "cut.mgpt"]


def test_partial_indexes_what_is_complete(tmp_path: Path, truncated: Path) -> None:
    result = run(str(truncated), "--partial")
    assert result.returncode == 0, result.stderr
    assert f"warning: {truncated}: invalid JSON before byte {truncated.stat().st_size}" in result.stderr
    assert "2 conversations read" in result.stdout
    with Index(tmp_path / "cut.mgpt") as index:
        assert index.lookup([("user", "cut")]) == []
        assert len(index.lookup([("user", "hi")])) == 2


def test_invalid_json_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"id": "a", "conversations": []}, {"id": "b" "conversations": []}]')
    code, output = invoke("index", str(path))
    assert code == 1
    assert f"{path}: invalid JSON before byte" in output
    assert not (tmp_path / "bad.mgpt").exists()


@pytest.mark.parametrize("content", ["", "  \n", "[]", "[\n]\n"])
def test_empty_input(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.json"
    path.write_text(content)
    code, output = invoke("index", str(path))
    assert code == 1
    assert "empty file" in output or "no conversation to index" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.json"]


def test_malformed_conversations_are_skipped_and_counted(tmp_path: Path) -> None:
    source = write_sharegpt(
        tmp_path / "mixed.json",
        [
            *GOOD,
            {"id": "no-list"},
            {"id": "no-value", "conversations": [{"from": "human"}]},
            {"id": "number", "conversations": [{"from": "human", "value": 3}]},
            {"id": "alien", "conversations": [{"from": "alien", "value": "x"}, {"from": "gpt", "value": "y"}]},
            sharegpt("lead", ("gpt", "I start."), ("human", "ok"), ("gpt", "fine")),
            sharegpt("lonely", ("human", "anyone?")),
        ],
    )
    code, output = invoke("index", str(source))
    assert code == 0, output
    assert "8 conversations read: 3 indexed, 5 skipped\n  4 answers (assistant turns)" in output
    for reason in [
        "1 no conversations list",
        "1 turn without from/value",
        "1 non-string from/value",
        "1 unknown role",
        "1 conversation without an assistant turn to index",
    ]:
        assert f"skipped: {reason}" in output
    assert "not indexed: the opening assistant turn of 1 conversations" in output
    assert "first skipped conversations: no-list, no-value, number, alien" in output


def write_lines(path: Path, objects: list[object]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return path


@pytest.mark.parametrize("forced", [False, True])
def test_sharegpt_jsonl(tmp_path: Path, forced: bool) -> None:
    source = write_lines(tmp_path / "chats.jsonl", GOOD)
    code, output = invoke("index", str(source), *(["--format", "sharegpt-jsonl"] if forced else []))
    assert code == 0, output
    with Index(tmp_path / "chats.mgpt") as index:
        assert len(index.lookup([("user", "hi")])) == 2


def test_openai_jsonl_ids_are_line_numbers(tmp_path: Path) -> None:
    lines = [
        {"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "yo"}]},
    ]
    source = write_lines(tmp_path / "ft.jsonl", lines)
    code, output = invoke("index", str(source))
    assert code == 0, output
    with Index(tmp_path / "ft.mgpt") as index:
        (answer,) = index.lookup([("system", "Terse."), ("user", "2+2?")])
        assert (answer.text, answer.conversation_id, answer.turn) == ("4", "1", 2)
        assert index.lookup([("user", "hi")])[0].conversation_id == "2"


def test_jsonl_error_names_line_and_byte(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "chats.jsonl", GOOD)
    with open(source, "a") as file:
        file.write('{"id": "c", "conversa')
    code, output = invoke("index", str(source))
    assert code == 1
    assert f"invalid JSON on line 3 (byte {len(source.read_bytes()) - 21})" in output
    code, output = invoke("index", str(source), "--partial")
    assert code == 0 and "2 conversations read" in output


def test_lookup(tmp_path: Path) -> None:
    source = write_sharegpt(tmp_path / "chats.json", GOOD)
    invoke("index", str(source))
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": " hi\r\n"}]})
    code, output = invoke("lookup", str(tmp_path / "chats.mgpt"), "-", input=body)
    assert code == 0
    assert "user: 'hi'" in output and "key: " in output
    assert "answer 1: conversation b, turn 1" in output and "Hi there." in output
    code, output = invoke("lookup", str(tmp_path / "chats.mgpt"), input='[{"role": "user", "content": "bye"}]')
    assert code == 1 and output.endswith("miss\n")
    code, output = invoke("lookup", str(tmp_path / "chats.mgpt"), input='{"messages": 3}')
    assert code == 1 and "not a chat completion request" in output


def test_lookup_refuses_a_foreign_index(tmp_path: Path) -> None:
    (tmp_path / "x.mgpt").write_bytes(b"\0" * 200)
    code, output = invoke("lookup", str(tmp_path / "x.mgpt"), input='[{"role": "user", "content": "hi"}]')
    assert code == 1 and "not a mockgpt index" in output


# Progress. A bar is drawn only when stderr is a terminal, so these tests run the command under a
# pseudo-terminal; the dataset is a few MB so that the bar moves between 0% and 100%.

SYNTH = Path(__file__).resolve().parent.parent / "tools" / "synth_sharegpt.py"
SERVING = "mockgpt: serving"


def bar(label: str, percent: str = r"\d+") -> re.Pattern[str]:
    return re.compile(rf"{label}\s+\[[# -]*\]\s+({percent})%")


class Terminal:
    """``python -m mockgpt ARGS`` with stdin, stdout and stderr on a pseudo-terminal; a context manager
    that always ends the command."""

    def __init__(self, *args: str) -> None:
        primary, secondary = pty.openpty()
        command = [sys.executable, "-m", "mockgpt", *args]
        self.process = subprocess.Popen(command, stdin=secondary, stdout=secondary, stderr=secondary)
        os.close(secondary)
        self.primary = primary
        self.received = b""

    @property
    def output(self) -> str:
        return self.received.decode(errors="replace")

    def read_until(self, text: str | None, timeout: float = 60) -> str:
        """What the command printed until ``text`` appeared, or until it closed the terminal (``None``)."""
        deadline = time.monotonic() + timeout
        while text is None or text not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {text!r}; printed: {self.output!r}"
            if not select.select([self.primary], [], [], left)[0]:
                continue
            try:
                chunk = os.read(self.primary, 1 << 16)
            except OSError:  # EIO on Linux once every end of the terminal is closed
                chunk = b""
            if not chunk:
                assert text is None, f"ended before {text!r}; printed: {self.output!r}"
                break
            self.received += chunk
        return self.output

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self, type: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.close(self.primary)


def on_terminal(*args: str) -> tuple[int, str]:
    """Run ``mockgpt ARGS`` on a pseudo-terminal to its end: exit status and everything printed."""
    with Terminal(*args) as terminal:
        output = terminal.read_until(None)
        return terminal.process.wait(30), output


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "synth.json"
    subprocess.run([sys.executable, str(SYNTH), str(path), "--size", "8MB"], check=True, capture_output=True)
    return path


@pytest.fixture
def dataset(synthetic: Path, tmp_path: Path) -> Path:
    """A copy of the synthetic dataset with no index beside it yet."""
    return Path(shutil.copy(synthetic, tmp_path / "chats.json"))


def long_work(command: str, source: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """The arguments of ``mockgpt COMMAND`` on ``source``, and the file it writes."""
    output = tmp_path / ("out.mgpt" if command == "index" else "out.jsonl")
    return [command, str(source), "-o", str(output)], output


LONG_WORK = [("index", "indexing", "answers (assistant turns)"), ("export-requests", "exporting", "requests")]


@pytest.mark.parametrize(("command", "label", "summary"), LONG_WORK)
def test_progress_is_drawn_on_a_terminal(synthetic: Path, tmp_path: Path, command: str, label: str, summary: str) -> None:
    args, _ = long_work(command, synthetic, tmp_path)
    code, output = on_terminal(*args)
    assert code == 0, output
    percents = [int(match.group(1)) for match in bar(label).finditer(output)]
    assert percents and percents[0] == 0 and percents[-1] == 100, output
    # Drawn while the work went on, not only at its start and end.
    assert any(0 < percent < 100 for percent in percents), output
    assert summary in output


@pytest.mark.parametrize(("command", "label", "summary"), LONG_WORK)
def test_quiet_on_a_terminal_prints_nothing(synthetic: Path, tmp_path: Path, command: str, label: str, summary: str) -> None:
    args, written = long_work(command, synthetic, tmp_path)
    assert on_terminal(*args, "--quiet") == (0, "")
    assert written.stat().st_size > 0


@pytest.mark.parametrize(("command", "label", "summary"), LONG_WORK)
def test_no_progress_off_a_terminal(synthetic: Path, tmp_path: Path, command: str, label: str, summary: str) -> None:
    args, _ = long_work(command, synthetic, tmp_path)
    result = subprocess.run([sys.executable, "-m", "mockgpt", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert label not in result.stdout and "%" not in result.stdout
    assert summary in result.stdout


def test_export_requests_of_a_cut_off_dataset_on_a_terminal(sharegpt_path: Path, tmp_path: Path) -> None:
    """The real prefix ends mid-string: the requests before the break are written, and the bar ends full."""
    code, output = on_terminal("export-requests", str(sharegpt_path), "-o", str(tmp_path / "out.jsonl"))
    assert code == 0, output
    assert [match.group(1) for match in bar("exporting").finditer(output)][-1] == "100"
    assert "out.jsonl: 61,250 requests" in output
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 61_250


def test_serve_shows_progress_while_it_indexes_a_dataset(dataset: Path) -> None:
    index = dataset.with_suffix(".mgpt")
    with Terminal("serve", "--index", str(dataset), "--port", "0") as terminal:
        output = terminal.read_until(SERVING)
    heading = output.index(f"mockgpt: indexing {dataset} into {index}")
    drawn = list(bar("indexing").finditer(output))
    assert drawn and heading < drawn[0].start(), output
    assert drawn[-1].group(1) == "100" and drawn[-1].end() < output.index(SERVING), output
    assert f"{SERVING} {index}" in output


def test_serve_of_an_indexed_dataset_shows_no_progress(dataset: Path) -> None:
    assert invoke("index", str(dataset), "--quiet") == (0, "")
    with Terminal("serve", "--index", str(dataset), "--port", "0") as terminal:
        output = terminal.read_until(SERVING)
    assert "indexing" not in output


def test_serve_indexes_quietly_off_a_terminal(dataset: Path) -> None:
    with MockServer(dataset) as server:
        assert "indexing" not in server.output and "%" not in server.output
    assert dataset.with_suffix(".mgpt").exists()


def test_serve_of_a_cut_off_dataset_fails_in_one_line(truncated: Path) -> None:
    command = [sys.executable, "-m", "mockgpt", "serve", "--index", str(truncated), "--port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (1, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {truncated}: invalid JSON before byte") and "mockgpt index --partial" in line
    assert not truncated.with_suffix(".mgpt").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["serve", "--port", "x"], "Error: Invalid value for '--port': 'x' is not a valid integer range."),
        (["serve", "--max-queue", "3"], "Error: --max-queue needs --max-concurrency: without it no request waits"),
        (["serve", "--overload-status", "503"], "Error: --overload-status needs --max-concurrency: without it no request waits"),
        (["serve", "--slowdown", "2"], "Error: --slowdown needs --max-concurrency: without it no request waits"),
        (["serve", "--prompt-cache-size", "10"], "Error: --prompt-cache-size needs --prompt-cache"),
        (["serve", "--prompt-cache", "--prompt-cache-size", "0"], "Error: Invalid value for '--prompt-cache-size': 0 is not in the range x>=1."),
        (["serve", "--itl-ms", "20", "--tokens-per-second", "50"], "Error: give --itl-ms or --tokens-per-second, not both"),
        (["serve", "--fault-status", "500,600"], "Error: Invalid value for --fault-status: '500,600' is not a list of statuses from 400 to 599"),
        (["serve", "--bogus"], "Error: No such option '--bogus'."),
        (["bogus"], "Error: No such command 'bogus'."),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mockgpt", *args], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith(message)


def test_serve_of_a_cut_off_dataset_on_a_terminal_ends_the_bar_then_fails(truncated: Path) -> None:
    code, output = on_terminal("serve", "--index", str(truncated), "--port", "0")
    assert code == 1
    drawn = bar("indexing").search(output)
    # The bar's line is ended, so that the error is a line of its own, the last.
    error = re.search(r"\n(Error: [^\r\n]*)\s*$", output)
    assert drawn and error and drawn.end() < error.start(), output
    assert error.group(1).startswith(f"Error: {truncated}: invalid JSON") and "mockgpt index --partial" in error.group(1)
    assert output.count("Error:") == 1 and SERVING not in output


def test_export_requests_from_an_index_names_its_datasets(dataset: Path, tmp_path: Path) -> None:
    index = tmp_path / "built.mgpt"
    assert invoke("index", str(dataset), "-o", str(index), "-q")[0] == 0
    code, output = invoke("export-requests", str(index), "-o", str(tmp_path / "out.jsonl"))
    assert code == 1
    assert output == f"Error: {index} is a mockgpt index, not a dataset: export requests from the dataset it was built from ({dataset.name})\n"
    assert not (tmp_path / "out.jsonl").exists()
