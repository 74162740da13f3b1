"""``deid plugins``: every registered plug-in, and the plug-in tables of docs/manifest.md.

Contract:

* ``deid plugins`` prints, grouped by kind (detector, latent, method, recognizer, attack, attribute), each
  plug-in's name, summary, licences (code and weights), needs and params (name, type,
  default, description). Weights that may not be used commercially are flagged
  ``NON-COMMERCIAL`` on the plug-in's first line. Summaries and licences wrap; a param line
  is cut to the terminal width (``--json`` has every word). ``--kind KIND`` prints one kind.
* ``deid plugins --json`` prints ``[p.describe() for p in deid.plugins.all_plugins()]``
  (of one kind with ``--kind``).
* :func:`markdown_tables` renders, for the manifest's pluggable sections (detector, latent,
  method), the built-in plug-ins (modules under ``deid.``) and their params as markdown.
  docs/manifest.md holds each between ``<!-- plugins:KIND -->`` and ``<!-- /plugins:KIND -->``;
  ``python -m deid.cli.plugins --write-docs docs/manifest.md`` rewrites them there and
  ``--check`` exits 1 when the file differs from what the registry gives (tests do the same).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import textwrap
from pathlib import Path

import typer

from deid.plugins import type_text

DOC_KINDS = ("detector", "latent", "method")
WRITE_DOCS = "python -m deid.cli.plugins --write-docs docs/manifest.md"


# ---------------------------------------------------------------------------- facts
def section(kind: str) -> tuple[str, str, str | None]:
    """Where a kind sits in a manifest: ``(key naming the plug-in, where its params go, default)``;
    the evaluation's kinds have no manifest section (every registered one runs)."""
    if kind == "detector":
        from deid.faces.registry import DEFAULT_DETECTOR

        return "detect.backend", "detect", DEFAULT_DETECTOR
    if kind == "latent":
        from deid.latent.registry import DEFAULT_BACKEND

        return "latent.backend", "latent", DEFAULT_BACKEND
    if kind == "method":
        from deid.anonymize.registry import DEFAULT_METHOD

        return "anonymize.method", "anonymize.params", DEFAULT_METHOD
    return "", "", None


def licence_text(p) -> str:
    lic = p.licence
    text = f"code {lic.code}; weights {lic.weights or 'none'}"
    return text + (" (NON-COMMERCIAL)" if lic.non_commercial else "")


def needs_text(p) -> str:
    n = p.needs
    if p.kind == "latent":  # what a latent model is, not what it needs
        kind = [f"latent kind {n.latent}"] if n.latent else []
    else:
        kind = [f"a latent model ({n.latent})"] if n.latent else []
    parts = ([f"landmarks {n.landmarks}"] if n.landmarks else []) + kind
    parts += (["the privacy ledger (DP)"] if n.dp else []) + (["can use a GPU"] if n.gpu else [])
    return ", ".join(parts) or "-"


def default_text(field) -> str:
    if field.is_required():
        return "required"
    d = field.get_default(call_default_factory=True)
    return json.dumps(list(d) if isinstance(d, tuple) else d, ensure_ascii=False)


# ---------------------------------------------------------------------------- text
def plugins_cmd(
    kind: str = typer.Option(None, "--kind", help="only this kind: detector, latent, method, recognizer, attack, attribute"),
    json_out: bool = typer.Option(False, "--json", help="print the plug-ins' declarations as JSON"),
) -> None:
    """List the registered plug-ins: summary, params, needs, code and weights licences."""
    from deid.plugins import KINDS, all_plugins

    if kind is not None and kind not in KINDS:
        typer.echo(f"error: unknown kind {kind!r} (kinds: {', '.join(KINDS)})", err=True)
        raise typer.Exit(2)
    plugins = [p for p in all_plugins() if kind in (None, p.kind)]
    if json_out:
        typer.echo(json.dumps([p.describe() for p in plugins], indent=2, ensure_ascii=False, default=str))
        return
    typer.echo("\n".join(text_lines(plugins, width=shutil.get_terminal_size((100, 24)).columns)))


def text_lines(plugins: list, width: int = 100) -> list[str]:
    """What ``deid plugins`` prints for ``plugins`` (in the order given, grouped by kind)."""
    width = max(width, 60)
    out: list[str] = []
    for kind in dict.fromkeys(p.kind for p in plugins):
        these = [p for p in plugins if p.kind == kind]
        key, _, default = section(kind)
        where = (f"manifest {key}, default {default}" if key else "deid evaluate runs every one"
                 if kind in ("recognizer", "attack") else "estimates for deid.anonymize.ppas; no manifest section yet")
        out += ["" if out else None, f"{kind} ({len(these)}; {where})"]
        for p in these:
            flag = "  NON-COMMERCIAL WEIGHTS" if p.licence.non_commercial else ""
            out.append("")
            out += _wrap(f"{p.name}{flag}: {p.summary}", width, "  ", "    ")
            out += _wrap(f"licence: {licence_text(p)}", width, "    ", "      ")
            out.append(f"    needs: {needs_text(p)}")
            fields = p.params.model_fields
            if not fields:
                out.append("    params: none")
            name_w = max(len(n) for n in fields) if fields else 0
            for n, f in fields.items():
                line = f"    {n:<{name_w}}  {type_text(f)} = {default_text(f)}"
                line += f"  {f.description.strip()}" if f.description else ""
                out.append(line if len(line) <= width else line[: width - 1] + "…")
    return [x for x in out if x is not None]


def _wrap(text: str, width: int, indent: str, subsequent: str | None = None) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=subsequent or indent,
                         break_on_hyphens=False, break_long_words=False)


# ---------------------------------------------------------------------------- docs
def markdown_tables() -> dict[str, str]:
    """``{kind: markdown}`` for :data:`DOC_KINDS`: what docs/manifest.md holds between the markers."""
    from deid.plugins import registry

    return {kind: _markdown(kind, [p for p in registry(kind) if p.module.startswith("deid.")]) for kind in DOC_KINDS}


def _markdown(kind: str, plugins: list) -> str:
    key, params_at, default = section(kind)
    word = key.rsplit(".", 1)[-1]
    lines = [f"<!-- generated from the plug-in registry by `{WRITE_DOCS}`: edit the plug-ins, not this table -->",
             "",
             f"`{key}` names one of these (default `{default}`; `deid plugins --kind {kind}` prints the same):",
             "",
             f"| {word} | what it is | needs | licence |", "|---|---|---|---|"]
    for p in plugins:
        lic = licence_text(p).replace(" (NON-COMMERCIAL)", " **(NON-COMMERCIAL)**")
        lines.append(f"| `{p.name}` | {_cell(p.summary)} | {_cell(needs_text(p))} | {_cell(lic)} |")
    lines += ["", f"Fields of `{params_at}`" + (f" besides `{word}`" if params_at == key.rsplit(".", 1)[0] else "")
              + f", by {word}:", "", f"| field | {word}s | type | default | meaning |", "|---|---|---|---|---|"]
    rows: dict[str, list] = {}
    for p in plugins:
        for n, f in p.params.model_fields.items():
            rows.setdefault(n, []).append((p.name, f))
    order = list(rows)
    for n in sorted(rows, key=lambda n: (-len(rows[n]), order.index(n))):
        have = rows[n]
        who = "all" if len(have) == len(plugins) else ", ".join(f"`{name}`" for name, _ in have)
        lines.append(f"| `{n}` | {who} | {_per(have, type_text)} | {_per(have, _default_md)} | "
                     f"{_per(have, lambda f: (f.description or '').strip() or '-')} |")
    return "\n".join(lines)


def _default_md(field) -> str:
    text = default_text(field)
    return "**required**" if text == "required" else f"`{text}`"


def _per(have: list, render) -> str:
    """One value when every plug-in agrees, else ``a, b: value; c: value``."""
    by_value: dict[str, list[str]] = {}
    for name, f in have:
        by_value.setdefault(render(f), []).append(name)
    if len(by_value) == 1:
        return _cell(next(iter(by_value)))
    return "; ".join(f"{', '.join(names)}: {_cell(v)}" for v, names in by_value.items())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "\\<").replace("\n", " ")


def _block(kind: str) -> re.Pattern:
    return re.compile(rf"(<!-- plugins:{kind} -->\n)(?:.*?\n)?(<!-- /plugins:{kind} -->)", re.S)


def render_docs(text: str) -> str:
    """``text`` (docs/manifest.md) with every plug-in block regenerated. A missing marker pair is
    a :class:`ValueError` that names it."""
    for kind, table in markdown_tables().items():
        pattern = _block(kind)
        if not pattern.search(text):
            raise ValueError(f"no <!-- plugins:{kind} --> ... <!-- /plugins:{kind} --> block")
        text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="regenerate the plug-in tables of docs/manifest.md from the registry")
    ap.add_argument("--write-docs", type=Path, metavar="MANIFEST_MD", required=True)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is stale")
    args = ap.parse_args(argv)
    old = args.write_docs.read_text(encoding="utf-8")
    try:
        new = render_docs(old)
    except ValueError as exc:
        print(f"error: {args.write_docs}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != old:
            print(f"{args.write_docs}: plug-in tables are stale; run {WRITE_DOCS}", file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.write_docs.write_text(new, encoding="utf-8")
    print(f"{args.write_docs}: {'rewritten' if new != old else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
