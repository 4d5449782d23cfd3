"""Tool calls in the chat template's own format, through the official openai client against a real server:
SmolLM2 (ChatML, the same turn markers as Qwen) served under an alias whose registry entry names Qwen2.5's chat
template, so the tools are rendered by that template and the answer is constrained to its
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks: tool_choice required, named (streamed),
auto and none, parallel calls, and the call and its result going back through the template. A second alias
names Mistral Nemo's template: one `[TOOL_CALLS][...]` list whose calls carry ids of 9 characters, which the
results must name.

The assertions hold whatever the model writes where it is free to (a CPU with other rounding may make greedy
decoding pick other words): one call is bounded by the grammar (a city of at most 40 characters, bounded
whitespace: under 250 characters) inside its max_tokens of 400, and parallel calls stop at 8.

Run: spec/.venv/bin/python -m unittest -v test_tool_template   (in spec/serve; ctest -L serve)
"""
import json
import os
import re
import unittest

from serve_harness import ROOT, Server
from test_bad_input import stop_server

srv = None
MODEL = "smollm2-qwen"

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 40}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}}}}


MISTRAL = "smollm2-mistral"


def registry(dir):
    """A registry with SmolLM2's entry of configs/models.yaml (file, pin, sampling) under two other aliases,
    naming the Qwen2.5 and the Mistral Nemo templates."""
    with open(os.path.join(ROOT, "configs", "models.yaml")) as f:
        text = f.read()
    entry = re.search(r"^  smollm2:\n((?:    .*\n|\s*\n)+)", text, re.M).group(1).rstrip() + "\n"
    path = os.path.join(dir, "models.yaml")
    with open(path, "w") as f:
        f.write("default: %s\nmodels:\n" % MODEL)
        for alias, template in ((MODEL, "qwen2.5"), (MISTRAL, "mistral-nemo")):
            f.write("  %s:\n%s    chat_template: spec/fixtures/templates/%s.jinja\n" % (alias, entry, template))
    return path


def setUpModule():
    global srv
    srv = Server("-m", MODEL, "-m", MISTRAL, "--slots", "4", name="tooltemplate")
    srv.env = dict(os.environ, LUMEN_REGISTRY=registry(srv.dir))
    srv.start()


def tearDownModule():
    if srv is not None:
        stop_server(srv)


def client():
    return srv.openai(timeout=300)


def ask(**kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("temperature", 0)
    return client().chat.completions.create(**kw)


class TestToolTemplate(unittest.TestCase):
    def check_weather_call(self, call):
        self.assertTrue(call.id.startswith("call_"))
        self.assertEqual(call.type, "function")
        self.assertEqual(call.function.name, "get_weather")
        args = json.loads(call.function.arguments)
        self.assertEqual(set(args), {"city"})
        self.assertIsInstance(args["city"], str)
        self.assertLessEqual(len(args["city"]), 40)

    def test_required_call_and_its_result_going_back(self):
        question = {"role": "user", "content": "What's the weather in Oslo?"}
        r = ask(max_tokens=400, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
                messages=[question])
        c = r.choices[0]
        self.assertEqual(c.finish_reason, "tool_calls")
        self.assertIsNone(c.message.content)
        self.assertEqual(len(c.message.tool_calls), 1)
        call = c.message.tool_calls[0]
        if call.function.name == "get_weather":
            self.check_weather_call(call)
        else:
            self.assertEqual(call.function.name, "get_time")
        # the call and its result go back (rendered by the template as <tool_call> and <tool_response>)
        history = [question, c.message.model_dump(exclude_none=True),
                   {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
        r2 = ask(max_tokens=400, tools=[WEATHER, TIME], parallel_tool_calls=False, messages=history)
        m2 = r2.choices[0].message
        self.assertGreater(r2.usage.prompt_tokens, r.usage.prompt_tokens)
        self.assertTrue(m2.content or m2.tool_calls)
        self.assertNotIn("<tool_call>", m2.content or "")
        # the same history without the tools: the template still renders the call and its result
        r3 = ask(max_tokens=20, messages=history)
        self.assertIn(r3.choices[0].finish_reason, ("stop", "length"))
        self.assertGreater(r3.usage.prompt_tokens, ask(max_tokens=1, messages=[question]).usage.prompt_tokens + 10)

    def test_named_call_streamed(self):
        calls, finish, role = {}, None, None
        for chunk in ask(max_tokens=400, tools=[WEATHER, TIME], stream=True, parallel_tool_calls=False,
                         tool_choice={"type": "function", "function": {"name": "get_weather"}},
                         messages=[{"role": "user", "content": "Weather in Rome?"}]):
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            role = d.role or role
            for tc in d.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                c["id"] += tc.id or ""
                c["name"] += tc.function.name or ""
                c["arguments"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        self.assertEqual(role, "assistant")
        self.assertEqual(finish, "tool_calls")
        self.assertEqual(len(calls), 1, calls)
        for c in calls.values():
            self.assertTrue(c["id"].startswith("call_"))
            self.assertEqual(c["name"], "get_weather")
            self.assertIsInstance(json.loads(c["arguments"])["city"], str)

    def test_parallel_calls_bounded(self):
        # a small model may repeat its call: the grammar stops at 8, which fit in 1500 tokens
        r = ask(max_tokens=1500, tools=[WEATHER], tool_choice="required",
                messages=[{"role": "user", "content": "What's the weather in Oslo and in Rome?"}])
        self.assertEqual(r.choices[0].finish_reason, "tool_calls")
        calls = r.choices[0].message.tool_calls
        self.assertTrue(1 <= len(calls) <= 8, len(calls))
        self.assertEqual(len({c.id for c in calls}), len(calls))
        for c in calls:
            self.check_weather_call(c)

    def test_auto_answers_text_or_calls(self):
        for question in ("What's the weather in Paris?", "Write one sentence about cats."):
            for stream in (False, True):
                kw = dict(max_tokens=400, tools=[WEATHER], parallel_tool_calls=False,
                          messages=[{"role": "user", "content": question}])
                if stream:
                    text, calls, finish, pieces = "", [], None, 0
                    for chunk in ask(stream=True, **kw):
                        if chunk.choices:
                            d = chunk.choices[0].delta
                            text += d.content or ""
                            pieces += 1 if d.content else 0
                            calls += d.tool_calls or []
                            finish = chunk.choices[0].finish_reason or finish
                else:
                    c = ask(**kw).choices[0]
                    text, calls, finish = c.message.content or "", c.message.tool_calls or [], c.finish_reason
                # a call is read back as tool_calls, never left in the text
                self.assertNotIn("<tool_call>", text)
                if calls:
                    self.assertEqual(finish, "tool_calls")
                    self.assertEqual(len(calls), 1)
                    self.assertEqual(json.loads(calls[0].function.arguments).keys(), {"city"})
                else:
                    self.assertTrue(text.strip())
                    self.assertIn(finish, ("stop", "length"))
                    if stream and len(text) > 40:
                        # text is known by its first character and streamed from there, not held to the end
                        self.assertGreater(pieces, 1, text)

    def test_none_leaves_the_tools_out(self):
        with_tools = ask(max_tokens=5, tools=[WEATHER], tool_choice="auto",
                         messages=[{"role": "user", "content": "Hi"}])
        r = ask(max_tokens=20, tools=[WEATHER], tool_choice="none", messages=[{"role": "user", "content": "Hi"}])
        self.assertIsNone(r.choices[0].message.tool_calls)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        # the template's tool section (the tools, the format) is left out of the prompt
        self.assertLess(r.usage.prompt_tokens + 50, with_tools.usage.prompt_tokens)

    def test_mistral_ids_go_back_with_the_results(self):
        # Mistral's template renders a call with its id and refuses a result whose id is not 9 characters:
        # the ids the model wrote come back as the calls' ids, and the conversation goes on with them
        question = {"role": "user", "content": "What's the weather in Oslo?"}
        r = ask(model=MISTRAL, max_tokens=400, tools=[WEATHER, TIME], tool_choice="required",
                parallel_tool_calls=False, messages=[question])
        c = r.choices[0]
        self.assertEqual(c.finish_reason, "tool_calls", c.message.content)
        self.assertEqual(len(c.message.tool_calls), 1)
        results = []
        for call in c.message.tool_calls:
            self.assertRegex(call.id, r"^[a-zA-Z0-9]{9}$")
            self.assertIn(call.function.name, ("get_weather", "get_time"))
            self.assertIsInstance(json.loads(call.function.arguments), dict)
            results.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"})
        history = [question, c.message.model_dump(exclude_none=True)]
        r2 = ask(model=MISTRAL, max_tokens=20, tools=[WEATHER, TIME], parallel_tool_calls=False, messages=history + results)
        self.assertIn(r2.choices[0].finish_reason, ("stop", "length", "tool_calls"))
        self.assertGreater(r2.usage.prompt_tokens, r.usage.prompt_tokens)
        # an id the template cannot take is a 400 that says why
        import openai
        with self.assertRaises(openai.BadRequestError) as cm:
            ask(model=MISTRAL, max_tokens=5, messages=history + [dict(results[0], tool_call_id="call_1")])
        self.assertIn("9", cm.exception.message)

    def test_bad_tools_are_refused(self):
        import openai
        for kw in (dict(tools=[{"type": "function", "function": {"name": "bad name"}}]),
                   dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "other"}})):
            with self.assertRaises(openai.BadRequestError):
                ask(max_tokens=5, messages=[{"role": "user", "content": "hi"}], **kw)


if __name__ == "__main__":
    unittest.main()
