"""Structured output through the official openai client against a real server:
response_format json_schema and json_object (chat and completions, streaming
and not), the grammar extension, tools with tool_choice required / named /
auto, streamed tool calls reassembled, and malformed schemas and grammars as
400s that say what is wrong.

Run: spec/.venv/bin/python -m unittest -v test_structured   (in spec/serve; ctest -L serve)
"""
import json
import unittest

from serve_harness import Server
from test_bad_input import stop_server

srv = None

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 40}}}}}


def setUpModule():
    global srv
    srv = Server("-m", "smollm2", "--slots", "4", name="structured").start()


def tearDownModule():
    if srv is not None:
        stop_server(srv)


def client():
    return srv.openai(timeout=300)


def valid_person(test, text):
    v = json.loads(text)
    test.assertEqual(set(v), {"name", "age", "tags"})
    test.assertIsInstance(v["name"], str)
    test.assertLessEqual(len(v["name"]), 30)
    test.assertTrue(0 <= v["age"] <= 120)
    test.assertTrue(all(t in ("a", "b", "c") for t in v["tags"]))


RF = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


class TestStructured(unittest.TestCase):
    def test_json_schema_chat(self):
        for seed in (1, 2, 3):
            r = client().chat.completions.create(model="smollm2", seed=seed, temperature=1.0, max_tokens=300,
                messages=[{"role": "user", "content": "Invent a person."}], response_format=RF)
            valid_person(self, r.choices[0].message.content)
            self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_json_schema_streaming(self):
        parts = []
        for chunk in client().chat.completions.create(model="smollm2", seed=4, temperature=1.0, max_tokens=300, stream=True,
                messages=[{"role": "user", "content": "Invent a person."}], response_format=RF):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        valid_person(self, "".join(parts))

    def test_json_object_and_completions(self):
        # any JSON object: what the model writes inside it is up to the model (a small one may
        # write a string until its budget ends); ended by the grammar, it parses
        for seed in (1, 2, 3):
            r = client().chat.completions.create(model="smollm2", temperature=1.0, seed=seed, max_tokens=400,
                messages=[{"role": "user", "content": "A JSON object with a cat's name and age."}],
                response_format={"type": "json_object"})
            text = r.choices[0].message.content
            self.assertTrue(text.lstrip().startswith("{"), text)
            if r.choices[0].finish_reason == "stop":
                self.assertIsInstance(json.loads(text), dict)
        r = client().completions.create(model="smollm2", prompt="A person as JSON:", temperature=0.8, seed=5,
                                        max_tokens=300, extra_body={"response_format": RF})
        valid_person(self, r.choices[0].text)

    def test_grammar_extension(self):
        r = client().completions.create(model="smollm2", prompt="Is the sky blue? Answer:", max_tokens=10,
                                        temperature=1.0, extra_body={"grammar": 'root ::= " yes" | " no"'})
        self.assertIn(r.choices[0].text, (" yes", " no"))

    def test_tool_call_required(self):
        # one call: the grammar bounds it (a city of at most 40 characters, bounded whitespace), so
        # 200 tokens always reach its end whatever the CPU's rounding makes the model write
        r = client().chat.completions.create(model="smollm2", temperature=0, max_tokens=200, tools=[WEATHER],
            tool_choice="required", parallel_tool_calls=False,
            messages=[{"role": "user", "content": "What's the weather in Oslo?"}])
        m = r.choices[0].message
        self.assertEqual(r.choices[0].finish_reason, "tool_calls")
        self.assertIsNone(m.content)
        self.assertEqual(len(m.tool_calls), 1)
        call = m.tool_calls[0]
        self.assertTrue(call.id.startswith("call_"))
        self.assertEqual(call.function.name, "get_weather")
        self.assertIsInstance(json.loads(call.function.arguments)["city"], str)
        # the answer goes back as a tool message and the conversation goes on
        r2 = client().chat.completions.create(model="smollm2", temperature=0, max_tokens=30, tools=[WEATHER],
            messages=[{"role": "user", "content": "What's the weather in Oslo?"}, m.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}])
        self.assertTrue(r2.choices[0].message.content or r2.choices[0].message.tool_calls)

    def test_parallel_tool_calls_bounded(self):
        # parallel calls: a small model may repeat its call; the grammar stops it at 8 calls, which
        # fit in 1000 tokens (each at most ~90), so the answer always ends as tool calls
        r = client().chat.completions.create(model="smollm2", temperature=0, max_tokens=1000, tools=[WEATHER],
            tool_choice="required", messages=[{"role": "user", "content": "What's the weather in Oslo and in Rome?"}])
        self.assertEqual(r.choices[0].finish_reason, "tool_calls")
        calls = r.choices[0].message.tool_calls
        self.assertTrue(1 <= len(calls) <= 8, len(calls))
        self.assertEqual(len({c.id for c in calls}), len(calls))
        for c in calls:
            self.assertEqual(c.function.name, "get_weather")
            self.assertIsInstance(json.loads(c.function.arguments)["city"], str)

    def test_tool_call_streamed(self):
        calls = {}
        finish = None
        for chunk in client().chat.completions.create(model="smollm2", temperature=0, max_tokens=200, tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True,
                messages=[{"role": "user", "content": "Weather in Rome?"}]):
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            for tc in d.tool_calls or []:
                c = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                if tc.function.name:
                    c["name"] += tc.function.name
                c["arguments"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        self.assertEqual(finish, "tool_calls")
        self.assertEqual(calls[0]["name"], "get_weather")
        self.assertIn("city", json.loads(calls[0]["arguments"]))

    def test_malformed(self):
        import openai
        c = client()
        cases = [
            dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "hostname"}}}),
            dict(response_format={"type": "yaml"}),
            dict(extra_body={"grammar": 'root ::= "unterminated'}),
            dict(extra_body={"grammar": "root ::= nowhere"}),
            dict(tools=[{"type": "function", "function": {"name": "bad name"}}]),
            dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "other"}}),
        ]
        for kw in cases:
            with self.assertRaises(openai.BadRequestError, msg=str(kw)[:80]) as cm:
                c.chat.completions.create(model="smollm2", max_tokens=5, messages=[{"role": "user", "content": "hi"}], **kw)
            self.assertTrue(cm.exception.message, kw)
        # the server still answers
        self.assertTrue(c.chat.completions.create(model="smollm2", max_tokens=3, messages=[{"role": "user", "content": "hi"}]).choices)


if __name__ == "__main__":
    unittest.main()
