"""Conversation deltas: the agent (the official `mcp` client) is handed only what it has not seen
of a conversation, and the whole conversation whenever it cannot be sure it has the rest."""
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import agent_http, call, env, refused

pytestmark = pytest.mark.anyio

SYSTEM = {"role": "system", "content": "You are a careful coding assistant. " * 40}
pool = ThreadPoolExecutor(max_workers=8)


async def take_with(agent, args: dict | None = None) -> dict:
    """wait_for_request with `args` until a request comes (idle answers are normal)."""
    for _ in range(40):
        got = await call(agent, "wait_for_request", args or {})
        if got["status"] == "request":
            return got
        assert got["status"] == "idle", got
    pytest.fail("no request came")


async def turn(agent, void, model, messages, args=None, reply="noted"):
    """The editor sends `messages`; `agent` takes the request with `args` and answers `reply`.
    Returns the request as handed and the editor's conversation with the answer appended."""
    pending = pool.submit(void.chat.completions.create, model=model, messages=messages)
    request = await take_with(agent, args)
    await call(agent, "submit_response", {"request_id": request["request_id"],
                                          "lease_id": request["lease_id"], "content": reply})
    answer = pending.result(timeout=30).choices[0].message.content
    assert answer == reply
    return request, messages + [{"role": "assistant", "content": answer}]


def ask(messages, text):
    return messages + [{"role": "user", "content": text}]


def whole(request, messages):
    assert request["messages_from"] == 0, request
    assert request["messages"] == messages
    assert request["messages_total"] == len(messages)
    assert "earlier_messages" not in request


def delta(request, messages, start):
    assert request["messages_from"] == start, request
    assert request["messages"] == messages[start:]
    assert request["messages_total"] == len(messages)
    assert "get_conversation" in request["earlier_messages"]


async def test_a_growing_conversation_is_handed_as_deltas_and_full_or_fresh_hand_it_whole(void, model):
    async with agent_http() as agent:
        messages = ask([SYSTEM], "What does this function do?")
        first, messages = await turn(agent, void, model, messages, {"fresh": True})
        whole(first, messages[:-1])
        conversation = first["conversation_id"]
        for n in range(2, 5):
            messages = ask(messages, f"And question {n}?")
            request, messages = await turn(agent, void, model, messages)
            delta(request, messages[:-1], len(messages) - 3)
            assert request["conversation_id"] == conversation
            # The long system message is never repeated.
            assert all(m["role"] != "system" for m in request["messages"])
        messages = ask(messages, "Once more, whole please")
        request, messages = await turn(agent, void, model, messages, {"full": True})
        whole(request, messages[:-1])
        messages = ask(messages, "Back to deltas")
        request, messages = await turn(agent, void, model, messages)
        delta(request, messages[:-1], len(messages) - 3)
        # A new serving chat on the same MCP session starts from nothing.
        messages = ask(messages, "A new chat serves this")
        request, messages = await turn(agent, void, model, messages, {"fresh": True})
        whole(request, messages[:-1])
        # The same request again (the editor's regenerate): nothing new, so all of it.
        request, _ = await turn(agent, void, model, messages[:-1])
        whole(request, messages[:-1])


async def test_edited_history_and_an_unknown_conversation_are_handed_whole(void, model):
    async with agent_http() as agent:
        messages = ask([SYSTEM], "Rename foo to bar")
        first, messages = await turn(agent, void, model, messages, {"fresh": True})
        messages = ask(messages, "And baz to qux")
        request, messages = await turn(agent, void, model, messages)
        assert request["messages_from"] == 2
        # The user edits an earlier message of the same conversation, then goes on.
        edited = json.loads(json.dumps(messages))
        edited[2]["content"] = "I said something else here"
        edited = ask(edited, "Continue")
        request, _ = await turn(agent, void, model, edited)
        whole(request, edited)
        assert request["conversation_id"] == first["conversation_id"]
        # A conversation with history this session never saw (another editor window, say).
        history = ask([SYSTEM, {"role": "user", "content": "An old chat"},
                       {"role": "assistant", "content": "an old answer"}], "Picking it up again")
        request, _ = await turn(agent, void, model, history)
        whole(request, history)


async def test_a_second_agent_gets_the_whole_conversation(void, model):
    async with agent_http() as first, agent_http() as second:
        messages = ask([SYSTEM], "Explain the diff")
        _, messages = await turn(first, void, model, messages, {"fresh": True})
        messages = ask(messages, "Shorter")
        request, messages = await turn(first, void, model, messages)
        assert request["messages_from"] == 2
        messages = ask(messages, "Now in French")
        request, messages = await turn(second, void, model, messages, {"fresh": True})
        whole(request, messages[:-1])
        # The first agent still has what it was given; what it missed comes as its delta.
        messages = ask(messages, "Thanks")
        request, messages = await turn(first, void, model, messages)
        delta(request, messages[:-1], 4)
        assert [m["role"] for m in request["messages"]] == ["assistant", "user", "assistant", "user"]


async def test_two_conversations_interleaved_on_one_agent_stay_apart(void, model):
    async with agent_http() as agent:
        a = ask([SYSTEM], "Conversation A")
        b = ask([SYSTEM], "Conversation B")
        first_a, a = await turn(agent, void, model, a, {"fresh": True}, reply="a1")
        first_b, b = await turn(agent, void, model, b, reply="b1")
        assert first_a["conversation_id"] != first_b["conversation_id"]
        whole(first_b, b[:-1])
        a = ask(a, "A again")
        request, a = await turn(agent, void, model, a, reply="a2")
        delta(request, a[:-1], 2)
        assert request["conversation_id"] == first_a["conversation_id"]
        b = ask(b, "B again")
        request, b = await turn(agent, void, model, b, reply="b2")
        delta(request, b[:-1], 2)
        assert request["messages"][0]["content"] == "b1"


async def test_get_conversation_pages_the_whole_conversation(void, model):
    big = "0123456789" * 9000          # 90 KB: more than a page
    messages = [SYSTEM]
    for n in range(4):
        messages += [{"role": "user", "content": f"file {n}: " + "abcdefghij" * 2500},
                     {"role": "assistant", "content": f"read file {n}"}]
    messages = ask(messages, "And this one: " + big)
    async with agent_http() as agent:
        pending = pool.submit(void.chat.completions.create, model=model, messages=messages)
        request = await take_with(agent, {"fresh": True})
        ids = {"request_id": request["request_id"], "lease_id": request["lease_id"]}
        for key in ({"request_id": request["request_id"]},
                    {"conversation_id": request["conversation_id"]}):
            got, part, pages, cursor = [], "", 0, {}
            while True:
                page = await call(agent, "get_conversation", {**key, **cursor})
                pages += 1
                assert len(json.dumps(page["messages"])) <= 64 * 1024 + 64
                assert page["status"] == "conversation" and page["messages_total"] == len(messages)
                assert page["request_id"] == request["request_id"]
                assert page["conversation_id"] == request["conversation_id"]
                got += page["messages"]
                if "message_part" in page:
                    piece = page["message_part"]
                    assert len(piece["json_text"].encode()) <= 64 * 1024
                    part += piece["json_text"]
                    if piece["offset"] + len(piece["json_text"]) == piece["total_chars"]:
                        got.append(json.loads(part))
                        part = ""
                if page["next"] is None:
                    break
                cursor = page["next"]
            assert got == messages
            assert pages >= 4
        too_far = await refused(agent, "get_conversation", {"request_id": request["request_id"], "from": 99})
        assert too_far.startswith("from:")
        await call(agent, "submit_response", {**ids, "content": "all read"})
        assert pending.result(timeout=30).choices[0].message.content == "all read"
        gone = await refused(agent, "get_conversation", {"request_id": request["request_id"]})
        assert "not waiting or being answered" in gone and "full: true" in gone
        unknown = await refused(agent, "get_conversation", {"conversation_id": "conv-nothing"})
        assert "unknown conversation_id" in unknown
        both = await refused(agent, "get_conversation", {})
        assert "exactly one" in both


async def test_a_session_names_the_conversation(void, model):
    created = httpx.post(f"{env('GW_BASE_URL')}/sessions", headers={"Authorization": f"Bearer {env('GW_KEY')}"})
    assert created.status_code == 200, created.text
    session = created.json()
    editor = openai.OpenAI(base_url=env("GW_BASE_URL"), api_key=session["token"], max_retries=0, timeout=60)
    async with agent_http() as agent:
        one = ask([SYSTEM], "First chat of the session")
        first, one = await turn(agent, editor, model, one, {"fresh": True})
        assert first["session_id"] == session["session_id"]
        # Another first message, same session: the same conversation, so not a continuation
        # of what was handed, and it comes whole.
        two = ask([SYSTEM], "Second chat, same session")
        second, two = await turn(agent, editor, model, two)
        assert second["conversation_id"] == first["conversation_id"]
        whole(second, two[:-1])
        two = ask(two, "Go on")
        third, _ = await turn(agent, editor, model, two)
        delta(third, two, 2)
        # Without the session the same messages are another conversation.
        plain, _ = await turn(agent, void, model, ask([SYSTEM], "Second chat, same session"))
        assert plain["conversation_id"] != first["conversation_id"]


async def test_completions_are_never_cut(void, model):
    async with agent_http() as agent:
        for _ in range(2):
            pending = pool.submit(void.completions.create, model=model, prompt="def add(a, b):\n",
                                  suffix="\n", max_tokens=16)
            request = await take_with(agent)
            assert request["kind"] == "completion" and request["prompt"] == "def add(a, b):\n"
            assert "messages_from" not in request and "conversation_id" not in request
            await call(agent, "submit_response", {"request_id": request["request_id"],
                                                  "lease_id": request["lease_id"], "content": "    return a + b"})
            assert pending.result(timeout=30).choices[0].text == "    return a + b"
