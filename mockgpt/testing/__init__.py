"""The testing wing: a real mockgpt server for tests and scripts, the pytest plugin, and request sets
for load tools.

    from mockgpt.testing import MockServer

    with MockServer(index="data/chats.json", deterministic=True) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
"""

from mockgpt.testing.mock_server import Conversation, MockServer, ServerError, index_conversations

__all__ = ["Conversation", "MockServer", "ServerError", "index_conversations"]
