"""The api wing: each wire API as a pair of rooms, one that reads its requests into canonical messages
and one that renders its answers and events as bytes.

The chat completions and legacy completions APIs (chat, chat_render); the Responses API (responses,
responses_render). Each reads from the index wing and knows nothing of serving.
"""
