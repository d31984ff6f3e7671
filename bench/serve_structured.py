"""Structured output on the serving endpoint: chat tokens/s with `response_format: json_schema`
(vLLM's xgrammar backend, compact JSON) ÷ without, for the base and three adapters mixed, measured
side by side in alternating rounds of one run; and the share of schema answers that validate (must
be 1.0). Same bench model and adapters as serve_throughput.py.

    python bench/serve_structured.py [--folder F]

Results are printed as JSON; bench/RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve_throughput import NEW_TOKENS, PROMPTS, _start_server, _stop_server, _wait_for_first_token, build_models

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


def structured_part(base: str, adapters: list[str], folder: Path, rounds: int = 3) -> dict:
    """Chat tokens/s of the base and three adapters mixed, 64 in flight, with `response_format:
    json_schema` (xgrammar, compact JSON) and without, measured side by side in alternating rounds;
    and the share of schema answers that validate."""
    import asyncio

    import httpx
    import jsonschema

    home = folder / "home"
    env = os.environ | {"RAYFT_HOME": str(home)}
    register = "from rayft.registry import Registry; r = Registry(); " + "; ".join(
        f"r.find_by_artifact({p!r}) or r.register('a{i}', 'adapter', {base!r}, {p!r})" for i, p in enumerate(adapters)
    )
    subprocess.run([sys.executable, "-c", register], env=env, check=True)
    port = 8777
    url = f"http://127.0.0.1:{port}"
    settings = {"port": port, "max_loras": 4, "max_num_seqs": PROMPTS, "max_model_len": 512}
    server, started = _start_server(folder / "serve-structured.yaml", base, settings, env)
    models = ["base", "a0", "a1", "a2"]
    fmt = {"type": "json_schema", "json_schema": {"name": "triage", "schema": TRIAGE}}

    async def wave(with_schema: bool) -> tuple[float, list[dict]]:
        limits = httpx.Limits(max_connections=PROMPTS, max_keepalive_connections=PROMPTS)
        async with httpx.AsyncClient(limits=limits, timeout=600) as client:

            async def ask(i: int) -> dict:
                body = {
                    "model": models[i % len(models)],
                    "messages": [{"role": "user", "content": f"Ticket {i}: my invoice is wrong, please triage it"}],
                    "max_tokens": 2 * NEW_TOKENS,  # room for the longest JSON the schema allows
                    "temperature": 0,
                } | ({"response_format": fmt} if with_schema else {"ignore_eos": True})
                response = await client.post(
                    f"{url}/v1/chat/completions", json=body, headers={"x-rayft-cache": "bypass"}
                )
                response.raise_for_status()
                return response.json()

            begun = time.perf_counter()
            answers = await asyncio.gather(*(ask(i) for i in range(PROMPTS)))
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

    try:
        _wait_for_first_token(url, "base", started)
        for name in models[1:]:
            httpx.post(f"{url}/admin/adapters", json={"model": name}, timeout=300).raise_for_status()
        asyncio.run(wave(True))  # warm-up: the grammar compiled, adapters in their slots
        asyncio.run(wave(False))
        ratios, checked, invalid, lenient = [], [], [], []
        for _ in range(rounds):
            with_rate, answers = asyncio.run(wave(True))
            without_rate, _ = asyncio.run(wave(False))
            ratios.append(with_rate / without_rate)
            checked += [valid(a) for a in answers]
            invalid += [a["choices"][0] for a in answers if not valid(a)]
            lenient += [valid(a, strict=False) for a in answers]
    finally:
        _stop_server(server, url)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="where the bench model and adapters are kept (default: a temp folder)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="rayft-bench-structured-"))
    base, adapters = build_models(folder)
    print(
        json.dumps(
            {"model": "bench (hidden 512, 8 layers, fp32)", "structured": structured_part(base, adapters, folder)},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
