#!/usr/bin/env python3
"""Regenerates chat_templates.json: Jinja2 renderings of chat templates, the oracle for ChatTemplate.

    python3 crates/tokenizer/tests/data/regen_chat_templates.py [--model GGUF]

Templates: SmolLM2-135M-Instruct's `tokenizer.chat_template` (read from the GGUF with the `gguf`
package) and the Llama 3 Instruct template (Meta-Llama-3-8B-Instruct tokenizer_config.json; the
same text as peregrine_tokenizer::chat::LLAMA3_TEMPLATE). Jinja2 is set up as HF transformers
does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, raise_exception,
its `tojson` filter). A third template, `tojson_probe`, exercises `tojson`, loop controls and string methods.
"""
import argparse
import json
from pathlib import Path

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]

LLAMA3_TEMPLATE = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another one, please."},
    ],
    [
        {"role": "user", "content": "  padded content with spaces  \n"},
        {"role": "assistant", "content": "Reply with\nnewlines\n\nand unicode: café 😀 中文"},
        {"role": "user", "content": "<|im_start|> and <|eot_id|> written as text"},
    ],
    [{"role": "user", "content": ""}],
    [],
    [
        {"role": "user", "content": "Write code."},
        {"role": "assistant", "content": "```python\ndef f():\n    return {'a': 1}\n```"},
    ],
]


TOJSON_PROBE = "{%- for m in messages %}{% if loop.index0 > 2 %}{% break %}{% endif %}{% if m['content'] == '' %}{% continue %}{% endif %}{{ m | tojson }}\n{{ m | tojson(indent=2) }}\n{{ m['role'].upper() }} {{ m['content'].strip().split(' ') | length }}\n{% endfor %}{{ messages | tojson }}"


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers.utils.chat_template_utils._compile_jinja_template's tojson
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def render(source, messages, add_generation_prompt, bos, eos):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
    )


def smollm2_template(model):
    import gguf

    r = gguf.GGUFReader(model)
    field = r.fields["tokenizer.chat_template"]
    source = bytes(field.parts[-1]).decode("utf-8")
    toks = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(toks.parts[i]).decode("utf-8") for i in toks.data]
    bos = tokens[int(r.fields["tokenizer.ggml.bos_token_id"].parts[-1][0])]
    eos = tokens[int(r.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])]
    return source, bos, eos


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    smol_source, smol_bos, smol_eos = smollm2_template(args.model)
    templates = {
        "smollm2": {"source": smol_source, "bos_token": smol_bos, "eos_token": smol_eos},
        "llama3": {"source": LLAMA3_TEMPLATE, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "tojson_probe": {"source": TOJSON_PROBE, "bos_token": "<s>", "eos_token": "</s>"},
    }
    cases = []
    for name, t in templates.items():
        for messages in CONVERSATIONS:
            for agp in (False, True):
                cases.append({
                    "template": name,
                    "messages": messages,
                    "add_generation_prompt": agp,
                    "rendered": render(t["source"], messages, agp, t["bos_token"], t["eos_token"]),
                })
    out = {
        "oracle": "jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])",
        "version": f"jinja2 {jinja2.__version__}",
        "command": "python3 crates/tokenizer/tests/data/regen_chat_templates.py",
        "templates": templates,
        "cases": cases,
    }
    path = HERE / "chat_templates.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} B, {len(cases)} cases)")


if __name__ == "__main__":
    main()
