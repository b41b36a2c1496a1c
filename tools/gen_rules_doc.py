"""Regenerate docs/rules.md from the rule registry: python tools/gen_rules_doc.py [--check]"""

import sys
from pathlib import Path

from modelwarden.analysis.registry import all_meta
from modelwarden.catalog import load_catalog

OUT = Path(__file__).parents[1] / "docs" / "rules.md"


def render() -> str:
    lines = [
        "# Rules",
        "",
        "Generated from the rule registry by `tools/gen_rules_doc.py`; `modelwarden rules` prints the same list.",
        "Ids are stable: a rule may be retired, never renumbered.",
        "",
        "| id | name | default severity | formats | summary |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in all_meta():
        fmts = ", ".join(m.formats) or "all"
        lines.append(f"| {m.id} | {m.name} | {m.severity.label} | {fmts} | {m.summary} |")
    lines += ["", "## Remediation", ""]
    for m in all_meta():
        if m.remediation:
            lines.append(f"* **{m.id} {m.name}** — {m.remediation}")
    cat = load_catalog()
    lines += ["", "## Capability catalog", "", "From `src/modelwarden/catalog/ops.toml`.", "",
              "| capability | default severity | ops |", "| --- | --- | --- |"]
    for kind in cat.kinds.values():
        ops = sorted(op for op, spec in cat.specs.items() if kind.name in spec.capabilities)
        lines.append(f"| {kind.name} | {kind.severity.label} | {', '.join(ops)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.exists() and OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
