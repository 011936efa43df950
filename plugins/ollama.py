"""The Ollama ``Modelfile`` of a GGUF export: the run's prompt template as Ollama's Go
``TEMPLATE``, read off the template's own rendering, and the strings that end a reply. A
library module of the ``export`` plugin, not a plugin itself."""

from __future__ import annotations

import json
from dataclasses import dataclass

# -- Ollama ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OllamaTemplate:
    """The run's prompt template as Ollama's Go TEMPLATE over ``.System`` and ``.Messages``,
    read off the template's own rendering, and the strings that end a reply."""

    text: str
    stops: tuple[str, ...]


def ollama_template(template, bos: str, eos: str) -> OllamaTemplate | None:
    """The Go form of ``template``, or None when its rendering is not one text per turn
    (then Ollama falls back to the chat template embedded in the GGUF file).

    The pieces between the messages are cut out of renderings of probe conversations, and
    the result is accepted only if it rebuilds every prompt airo renders for one and two
    turns, with and without a system message, exactly (so for any number of turns: each
    turn adds the same text). llama.cpp adds the BOS token itself, so it is left out.
    """
    from airo.core import Conversation, Message

    S, U1, A1, U2, A2 = "\x00S\x00", "\x00U1\x00", "\x00A1\x00", "\x00U2\x00", "\x00A2\x00"

    def render(*messages) -> tuple[str, str]:
        """(the prompt before the last reply, the whole text), BOS left out."""
        conv = Conversation([Message(role, content) for role, content in messages])
        segments = template.render(conv, bos_token=bos, eos_token=eos)
        last = max((i for i, seg in enumerate(segments) if seg.reply), default=None)
        if last is None:
            raise ValueError("no reply segment")
        texts = ["".join(seg.text for seg in segments[:last]), "".join(seg.text for seg in segments)]
        return tuple(t[len(bos):] if bos and t.startswith(bos) else t for t in texts)  # type: ignore[return-value]

    def cut(text: str, marks: list[str]) -> list[str] | None:
        pieces, start = [], 0
        for mark in marks:
            pos = text.find(mark, start)
            if pos < 0:
                return None
            pieces.append(text[start:pos])
            start = pos + len(mark)
        return [*pieces, text[start:]]

    try:
        one_prompt, one = render(("user", U1), ("assistant", A1))
        one_s_prompt, _ = render(("system", S), ("user", U1), ("assistant", A1))
        two_prompt, _ = render(("user", U1), ("assistant", A1), ("user", U2), ("assistant", A2))
        two_s_prompt, _ = render(("system", S), ("user", U1), ("assistant", A1), ("user", U2), ("assistant", A2))
    except Exception:  # noqa: BLE001 - a template that cannot render the probe has no Go form
        return None
    first = cut(one_prompt, [U1])
    whole = cut(one, [U1, A1])
    with_system = cut(one_s_prompt, [S, U1])
    turns = cut(two_prompt, [U1, A1, U2])
    if None in (first, whole, with_system, turns):
        return None
    prefix, to_reply = first
    reply_lead, tail = whole[1][len(to_reply):], whole[2]
    head, system_to_user, _ = with_system
    between = turns[2]
    if not whole[1].startswith(to_reply):
        return None
    # every prompt up to a reply, rebuilt from the pieces, must be airo's
    for start, prompt in ((prefix, two_prompt), (head + S + system_to_user, two_s_prompt)):
        if prompt != start + U1 + to_reply + reply_lead + A1 + between + U2 + to_reply:
            return None
    if any("\x00" in piece for piece in (prefix, to_reply, reply_lead, head, system_to_user, between)):
        return None
    go = ("{{ if .System }}" + _go(head) + "{{ .System }}" + _go(system_to_user) + "{{ else }}" + _go(prefix)
          + "{{ end }}{{ $later := false }}{{ range .Messages }}"
          + '{{ if eq .Role "user" }}{{ if $later }}' + _go(between) + "{{ end }}{{ .Content }}" + _go(to_reply)
          + '{{ else if eq .Role "assistant" }}' + _go(reply_lead) + "{{ .Content }}{{ $later = true }}{{ end }}"
          + "{{ end }}")
    stops = tuple(dict.fromkeys(s for s in (tail.strip(), eos) if s))
    return OllamaTemplate(text=go, stops=stops)


def _go(text: str) -> str:
    """Literal text inside a Go template."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile_text(gguf_name: str, *, template_name: str | None, ollama: OllamaTemplate | None,
                   eos: str | None) -> str:
    lines = ["# Ollama Modelfile written by airo: ollama create NAME -f Modelfile",
             f"# prompt template: {template_name or 'unknown'}"
             + ("" if ollama else " (no per-turn form: Ollama uses the chat template embedded in the GGUF file)"),
             "# smaller quantizations: llama.cpp's llama-quantize on the f16 file, e.g. q4_k_m",
             f"FROM ./{gguf_name}"]
    if ollama is not None:
        lines.append(f'TEMPLATE """{ollama.text}"""')
    for stop in (ollama.stops if ollama is not None else ((eos,) if eos else ())):
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"
