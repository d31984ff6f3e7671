"""The `structured` part of serve_throughput.py (`python bench/serve_throughput.py --part structured`):
structured output on the serving endpoint. Chat tokens/s with `response_format: json_schema` (vLLM's
xgrammar backend, compact JSON) ÷ without, for the base and three adapters mixed, measured side by
side in alternating rounds of one run; and the share of schema answers that validate (must be 1.0).
Same bench model, adapters and workload as the other parts (`serve_common.py`).
"""

from __future__ import annotations

import json
import statistics
import time

from serve_common import Served, Workload

ANSWER_TOKENS = 128  # room for the longest JSON the schema allows
TRIAGE = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "shipping", "technical", "account"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 40},
        "needs_human": {"type": "boolean"},
    },
    "required": ["category", "priority", "summary", "needs_human"],
    "additionalProperties": False,
}


def structured_part(server: Served, adapters: int, w: Workload) -> dict:
    """On `server` (its adapters registered as a0, a1, ...): chat tokens/s of the base and (up to)
    three adapters mixed, all in flight, with `response_format: json_schema` (xgrammar, compact
    JSON) and without, measured side by side in alternating rounds; and the share of schema answers
    that validate."""
    import asyncio

    import httpx
    import jsonschema

    url = server.url
    models = ["base"] + [f"a{i}" for i in range(min(3, adapters))]
    fmt = {"type": "json_schema", "json_schema": {"name": "triage", "schema": TRIAGE}}

    async def wave(with_schema: bool) -> tuple[float, list[dict]]:
        limits = httpx.Limits(max_connections=w.prompts, max_keepalive_connections=w.prompts)
        async with httpx.AsyncClient(limits=limits, timeout=600) as client:

            async def ask(i: int) -> dict:
                body = {
                    "model": models[i % len(models)],
                    "messages": [{"role": "user", "content": f"Ticket {i}: my invoice is wrong, please triage it"}],
                    "max_tokens": ANSWER_TOKENS,
                    "temperature": 0,
                } | ({"response_format": fmt} if with_schema else {"ignore_eos": True})
                response = await client.post(
                    f"{url}/v1/chat/completions", json=body, headers={"x-rayft-cache": "bypass"}
                )
                response.raise_for_status()
                return response.json()

            begun = time.perf_counter()
            answers = await asyncio.gather(*(ask(i) for i in range(w.prompts)))
            tokens = sum(a["usage"]["completion_tokens"] for a in answers)
            return tokens / (time.perf_counter() - begun), answers

    def valid(answer: dict, strict: bool = True) -> bool:
        """Whether the answer is JSON of the schema; `strict`: as Python's json (and OpenAI's
        clients) read it, no raw control character inside a string."""
        try:
            jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"], strict=strict), TRIAGE)
        except (json.JSONDecodeError, jsonschema.ValidationError, TypeError):
            return False
        return True

    for name in models[1:]:
        httpx.post(f"{url}/admin/adapters", json={"model": name}, timeout=300).raise_for_status()
    asyncio.run(wave(True))  # warm-up: the grammar compiled, adapters in their slots
    asyncio.run(wave(False))
    ratios, checked, invalid, lenient = [], [], [], []
    for _ in range(w.rounds):
        with_rate, answers = asyncio.run(wave(True))
        without_rate, _ = asyncio.run(wave(False))
        ratios.append(with_rate / without_rate)
        checked += [valid(a) for a in answers]
        invalid += [a["choices"][0] for a in answers if not valid(a)]
        lenient += [valid(a, strict=False) for a in answers]
    return {
        "models": models,
        "ratio_tok_s_with_schema_over_without": statistics.median(ratios),
        "ratios_per_round": ratios,
        "schema_answers": len(checked),
        "share_valid": sum(checked) / len(checked),
        "share_valid_allowing_control_characters": sum(lenient) / len(lenient),
        "invalid_finish_reasons": sorted({c["finish_reason"] for c in invalid}),
        "invalid_examples": [c["message"]["content"] for c in invalid[:3]],
    }
