"""From a request's messages to the recorded answers it gets: find, choose, cut, and stream.

Nothing here knows HTTP or a wire format: each API (the api wing) reads its requests into messages, and
renders what this returns.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import NamedTuple

import msgspec

from mockgpt.errors import BadRequest, ConversationNotFound
from mockgpt.index import canonical, tokens
from mockgpt.index.reader import Index
from mockgpt.index.records import Answer, Record, StoredCall

__all__ = ["Cut", "Replayer", "Sent", "argument_pieces", "cut", "framed_answer", "pieces"]

# The roles the API accepts; the dataset's other names for them are not part of the API.
_API_ROLES = {name: canonical.ROLES[name] for name in ("system", "assistant", "user", "function", "tool", "developer")}
_encode_text = msgspec.json.Encoder().encode
_ROLE_NAMES = "'system', 'assistant', 'user', 'function', 'tool', and 'developer'"


def _bad_role(messages: Sequence[canonical.Message]) -> BadRequest:
    number, message = next((n, m) for n, m in enumerate(messages) if m.role not in _API_ROLES)
    return BadRequest(f"Invalid value: '{message.role}'. Supported values are: {_ROLE_NAMES}.", param=f"messages[{number}].role")


class Cut(NamedTuple):
    """An answer as served: cut by ``max_tokens`` or a stop sequence, or whole."""

    answer: Answer
    # The text served, as a JSON string (``null`` for no text beside tool calls).
    content: bytes
    completion_tokens: int
    finish_reason: str
    # How many bytes of the text's UTF-8 the cut keeps; None for all of them.
    end: int | None
    # The tool calls served: all of them, or those the cut left whole.
    calls: Sequence[StoredCall] = ()


class Sent(msgspec.Struct, frozen=True, gc=False):
    """How a miss names the request's messages: the field they were sent in and what its items are called,
    and for each message the position of the item it came from."""

    field: str = "messages"
    noun: str = "message"
    # Per message, its item's position in ``field`` (None for one sent as ``preamble``); None: its own.
    places: Sequence[int | None] | None = None
    # How many items ``field`` held; None: one per message.
    items: int | None = None
    # What the messages continue, when they follow a recorded history: "response 'resp_...'".
    after: str | None = None
    # The field is one message in itself, as a legacy completion's prompt: it has no items to number.
    single: bool = False
    # The field that a message of place None was sent in.
    preamble: str = "instructions"


_CHAT = Sent()


class Unrecorded(Exception):
    """What ``locate`` raises for messages no record holds when the replayer synthesizes: their key, to draw
    a stand-in by (``stand_in``), and no explanation of the miss, which nobody would read."""

    def __init__(self, key: bytes) -> None:
        super().__init__("no record holds these messages")
        self.key = key


class Replayer:
    """Looks requests up in an index; ``ignore_system`` leaves system messages out of the key; with
    ``synthesize``, a miss is ``Unrecorded`` rather than an explained ``ConversationNotFound``."""

    def __init__(self, index: Index, *, ignore_system: bool = False, synthesize: bool = False) -> None:
        self.index = index
        self._skip = "system" if ignore_system else None
        self._synthesize = synthesize
        # Only then are a request's tokens not all in the index: load the tokenizer now, not on a request.
        self._tokenizer = tokens.Tokenizer() if ignore_system or synthesize else None

    def find(self, messages: Sequence[canonical.Message], sent: Sent = _CHAT) -> Record:
        """The record of request messages; ``BadRequest`` for an unknown role, ``ConversationNotFound``
        saying how far they match if there is no record, naming the messages as ``sent`` says."""
        return self.locate(messages, b"", sent)[1]

    def locate(self, messages: Sequence[canonical.Message], history: bytes = b"", sent: Sent = _CHAT) -> tuple[int, Record]:
        """The offset and record of request messages that follow ``history``, framed messages of a recorded
        conversation; errors as ``find``."""
        try:
            parts = canonical.frame_parts(messages, _API_ROLES, self._skip)
        except KeyError:
            raise _bad_role(messages) from None
        except canonical.TooDeep as error:
            raise _too_deep(messages, sent, error) from None
        framed = "".join(parts).encode("utf-8", "surrogatepass")
        key = history + framed if history else framed
        found = self.index.locate(key)
        if found is None:
            if self._synthesize:
                raise Unrecorded(key)
            raise self._not_found(messages, parts, history, sent)
        return found

    def framed(self, messages: Sequence[canonical.Message]) -> list[bytes]:
        """Request messages framed one by one, all of them, as a model reads its prompt: with
        ``ignore_system`` too; raises as ``frame_parts`` does."""
        return canonical.framed_messages(canonical.frame_parts(messages, _API_ROLES))

    def stand_in(self, messages: Sequence[canonical.Message], miss: Unrecorded) -> tuple[int, Record, int]:
        """For messages that have no record (``miss``): a record drawn by their key's digest, the same for
        the same messages, with its offset, and the prompt tokens the messages hold beyond the record's own
        (to give ``choose``)."""
        found = self.index.record_near(canonical.digest(miss.key))
        if found is None:
            # An index of no conversations: nothing to draw from.
            raise ConversationNotFound("No recorded conversation continues these messages: the index holds none.")
        assert self._tokenizer is not None
        counted = [self._tokenizer.count(canonical.text_of(message.content)) for message in messages]
        offset, record = found
        return offset, record, tokens.prompt_tokens(counted) - self.index.answer(record.answers[0]).prompt_tokens

    def choose(self, record: Record, n: int, seed: int | None, unkeyed_tokens: int = 0) -> list[Answer]:
        """``n`` answers: from the ``seed``-th (mod their number) or the first, cycling in dataset order.

        ``unkeyed_tokens`` are prompt tokens the request sent beyond those of the recorded prompt.
        """
        offsets = record.answers
        first = 0 if seed is None else seed % len(offsets)
        answers = [self.index.answer(offsets[(first + i) % len(offsets)]) for i in range(n)]
        if unkeyed_tokens:
            answers = [msgspec.structs.replace(a, prompt_tokens=a.prompt_tokens + unkeyed_tokens) for a in answers]
        return answers

    def system_tokens(self, messages: Sequence[canonical.Message]) -> int:
        """The prompt tokens of the system and developer messages left out of the key (0 if none are)."""
        if self._tokenizer is None:
            return 0
        counts = [self._tokenizer.count(canonical.text_of(m.content)) for m in messages if _API_ROLES.get(m.role) == self._skip]
        # What these messages add to a prompt: the reply's priming is counted once, already.
        return tokens.prompt_tokens(counts) - tokens.prompt_tokens([])

    def _not_found(
        self, messages: Sequence[canonical.Message], parts: list[str], history: bytes, sent: Sent
    ) -> ConversationNotFound:
        places = sent.places if sent.places is not None else range(len(messages))
        # The messages the key holds (``parts`` frames them, two pieces each), with their places in the request.
        kept = [(places[n], _API_ROLES[m.role]) for n, m in enumerate(messages) if _API_ROLES[m.role] != self._skip]
        framed = canonical.framed_messages(parts)
        matched, answer_next = self._recorded_prefix(history, framed, [role for _, role in kept])
        items = len(messages) if sent.items is None else sent.items
        these = f"this {sent.noun}" if items == 1 else f"these {items} {sent.noun}s"
        if sent.after:
            these += f" after {sent.after}"
        detail = _how_far(sent, [place for place, _ in kept], [role for _, role in kept], matched, answer_next, items)
        return ConversationNotFound(f"No recorded conversation continues {these}: {detail}", param=sent.field)

    def _recorded_prefix(self, history: bytes, framed: list[bytes], roles: list[str]) -> tuple[int, bool]:
        """How many of the first framed messages after ``history`` a recorded conversation holds, the most
        found; and whether an answer was recorded right after them.

        The index shows a recorded prefix in two places: a key (the messages before an answer), and a key
        followed by one of its answers. No recorded conversation is longer than the index's longest, so
        the search starts there: a request of any length costs at most a pass over that many messages.
        """
        top = min(len(framed), self.index.meta.longest or len(framed))
        find = self.index.prefixes(history, framed[:top])
        for count in range(top, 0, -1):
            if find(count) is not None:
                return count, True
            if roles[count - 1] == "assistant" and (count > 1 or history):
                record = find(count - 1)
                if record is not None and any(
                    framed_answer(answer.text, answer.tool_calls) == framed[count - 1]
                    for answer in map(self.index.answer, record.answers)
                ):
                    return count, False
        return 0, False


def _too_deep(messages: Sequence[canonical.Message], sent: Sent, error: canonical.TooDeep) -> BadRequest:
    """The error of tool call arguments nested too deeply, naming the first such call."""
    places = sent.places if sent.places is not None else range(len(messages))
    for number, message in enumerate(messages):
        for call, (_, _, arguments) in enumerate(canonical.calls_of(message)):
            try:
                canonical.arguments(arguments)
            except canonical.TooDeep:
                where = f"{sent.field}[{places[number]}]"
                param = f"{where}.tool_calls[{call}].function.arguments" if sent.field == "messages" else where
                words = f"Invalid value for '{param}': {error}; mockgpt keys tool calls by their arguments' canonical JSON."
                return BadRequest(words, param=param)
    return BadRequest(f"Invalid tool call arguments: {error}.")


def _how_far(sent: Sent, places: list[int | None], roles: list[str], matched: int, answer_next: bool, items: int) -> str:
    """How far the messages at ``places`` (in ``sent.field``) match a recorded conversation, in words."""
    field = sent.field
    if sent.single:
        if not matched:
            return f"{field} already differs from every recorded conversation."
        return f"{field} matches a recorded conversation's first message, but it has no assistant answer after it."
    if not matched:
        place = places[0] if places else 0
        return f"{sent.preamble if place is None else f'{field}[{place}]'} already differs from every recorded conversation."
    if matched == len(places):
        return f"{field}[0:{items}] match a recorded conversation, but it has no assistant answer after them."
    # Only the first message can come from ``instructions``, and it matched.
    first = places[matched] or 0
    detail = f"{field}[0:{first}] match a recorded conversation; {field}[{first}] is the first that differs"
    if answer_next and roles[matched] == "assistant":
        detail += " (no answer recorded there has this text)"
    elif answer_next:
        detail += " (the recorded conversation goes on with an assistant answer there)"
    return detail + "."


def framed_answer(text: str, calls: Sequence[StoredCall]) -> bytes:
    """The framing of a served answer as the next request sends it back: its text and its tool calls."""
    return canonical.frame_message(
        "assistant", canonical.normalize(text), [canonical.Call(call.id, call.name, call.arguments) for call in calls]
    )


def cut(answer: Answer, max_tokens: int | None, stop: str | Sequence[str] | None) -> Cut:
    """``answer`` after at most ``max_tokens`` of its tokens, and before the first ``stop`` sequence.

    Tokens run through the text, then each tool call in turn; a call the cut would split is left out, as
    are the calls after a stop sequence in the text.
    """
    calls = answer.tool_calls
    if max_tokens is None and not stop:
        return Cut(answer, answer.content, answer.completion_tokens, "tool_calls" if calls else "stop", None, calls)
    data = answer.text.encode()
    ends = list(accumulate(length + 1 for length in answer.token_lengths))
    end, tokens, reason = len(data), len(ends), "stop"
    if max_tokens is not None and max_tokens < tokens:
        end, tokens, reason = ends[max_tokens - 1], max_tokens, "length"
    text = data[:end].decode(errors="ignore")
    stops = [stop] if isinstance(stop, str) else stop or []
    found = [(text.find(s), s) for s in stops if s and s in text]
    if found:
        position, sequence = min(found)
        end = len(text[:position].encode())
        # The tokens generated up to and including the stop sequence.
        tokens = min(tokens, bisect_left(ends, end + len(sequence.encode())) + 1)
        text, reason = text[:position], "stop"
    if reason == "stop" and calls and not found:
        return _with_calls(answer, text, tokens, end, max_tokens)
    return Cut(answer, _encode_text(text), tokens, reason, end)


# The most tokens an answer is lengthened to: a model of a 128K context stops there whatever it is asked.
LONGEST_ANSWER = 131_072


def lengthened(answer: Answer, tokens: int) -> Answer:
    """``answer`` gone on past its recorded end, its recorded text over again, until it holds at least
    ``tokens`` tokens (at most ``LONGEST_ANSWER``), as a model asked not to stop before them: vLLM's
    ``ignore_eos`` and ``min_tokens``. An answer with tool calls, or long enough, is as it is."""
    recorded = len(answer.token_lengths)
    if answer.tool_calls or not recorded or recorded >= tokens:
        return answer
    copies = -(-min(tokens, LONGEST_ANSWER) // recorded)
    return msgspec.structs.replace(
        answer, content=_encode_text(answer.text * copies), token_lengths=answer.token_lengths * copies,
        completion_tokens=recorded * copies,
    )


def _with_calls(answer: Answer, text: str, tokens: int, end: int, max_tokens: int | None) -> Cut:
    """The whole text, and the tool calls that fit in ``max_tokens``."""
    kept: list[StoredCall] = []
    for call in answer.tool_calls:
        cost = call.name_tokens + len(call.token_lengths)
        if max_tokens is not None and tokens + cost > max_tokens:
            return Cut(answer, _encode_text(text), max_tokens, "length", end, kept)
        kept.append(call)
        tokens += cost
    return Cut(answer, _encode_text(text) if text else b"null", tokens, "tool_calls", end, kept)


def pieces(cut: Cut) -> Iterator[str]:
    """The cut answer's text one recorded token at a time; a token ending inside a character joins the next."""
    return map(bytes.decode, utf8_pieces(cut, cut.answer.text.encode()))


def utf8_pieces(cut: Cut, text: bytes) -> Iterator[bytes]:
    """``pieces``, encoded: cut from ``text``, the answer's text in UTF-8."""
    return _split(text, cut.answer.token_lengths, len(text) if cut.end is None else cut.end)


def argument_pieces(call: StoredCall) -> Iterator[str]:
    """A tool call's arguments one recorded token at a time."""
    data = call.arguments.encode()
    return map(bytes.decode, _split(data, call.token_lengths, len(data)))


def _split(data: bytes, token_lengths: bytes, end: int) -> Iterator[bytes]:
    """``data[:end]`` cut after each token, or before the character a token ends inside of (the last
    piece leaves out a character that ``end`` cuts)."""
    start = stop = 0
    size = len(data)
    for length in token_lengths:
        stop = min(stop + length + 1, end)
        cut = stop
        # Back to the start of the character: UTF-8 continuation bytes are 0b10xxxxxx.
        while cut < size and data[cut] & 0xC0 == 0x80:
            cut -= 1
        if cut > start:
            yield data[start:cut]
            start = cut
        if stop >= end:
            return
