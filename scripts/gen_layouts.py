#!/usr/bin/env python3
"""Generate goflame/binary/layouts/go1.NN.json, the runtime layouts used for stripped binaries.

For every Go release in the test matrix: build scripts/layoutprobe unstripped with that
release's real toolchain, read the runtime's struct layouts from its DWARF, and parse the
constants goflame needs (wait reason strings, g/P status values, funcIDs, func flags, hash
map constants, how pprof labels are stored) from that release's own runtime source in its
GOROOT. tests/test_layout.py checks every table
against the DWARF of fresh builds and against the constants the compiler put in DWARF.

    .venv/bin/python scripts/gen_layouts.py                 # all releases
    .venv/bin/python scripts/gen_layouts.py 1.27 1.26       # some
    .venv/bin/python scripts/gen_layouts.py --check         # exit 1 if a table is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from goflame.binary.layout import Layout, layout_from_dwarf  # noqa: E402
from gotoolchain import MATRIX, BuildSpec, build, goroot  # noqa: E402

PROBE = ROOT / "scripts" / "layoutprobe"
OUT = ROOT / "goflame" / "binary" / "layouts"


# --------------------------------------------------------------------------- Go const blocks


def layout_to_dict(layout: Layout, **extra: Any) -> dict[str, Any]:
    """The JSON table format: fields as [offset, size, type], sorted by offset then name."""
    out: dict[str, Any] = {"go": layout.version, **extra, "ptr_size": layout.ptr_size}
    out["structs"] = {
        name: {
            "size": s.size,
            "fields": {
                f: [v.offset, v.size, v.type]
                for f, v in sorted(s.fields.items(), key=lambda kv: (kv[1].offset, kv[0]))
            },
        }
        for name, s in sorted(layout.structs.items())
    }
    out["wait_reasons"] = list(layout.wait_reasons)
    for key in ("g_status", "p_status", "func_ids", "func_flags", "map_consts"):
        out[key] = dict(sorted(getattr(layout, key).items(), key=lambda kv: (kv[1], kv[0])))
    out["label_store"] = layout.label_store
    return out


def dump_table(data: dict[str, Any]) -> str:
    """JSON with one struct field or constant per line: stable and easy to diff."""
    lines = ["{"]
    items = list(data.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if key == "structs":
            lines.append('  "structs": {')
            snames = list(value)
            for j, sname in enumerate(snames):
                s = value[sname]
                lines.append(f"    {json.dumps(sname)}: {{")
                lines.append(f'      "size": {s["size"]},')
                lines.append('      "fields": {')
                fields = list(s["fields"].items())
                for k, (fname, fv) in enumerate(fields):
                    fc = "," if k < len(fields) - 1 else ""
                    lines.append(f"        {json.dumps(fname)}: {json.dumps(fv)}{fc}")
                lines.append("      }")
                lines.append("    }" + ("," if j < len(snames) - 1 else ""))
            lines.append("  }" + comma)
        elif isinstance(value, list) and value:
            lines.append(f"  {json.dumps(key)}: [")
            lines += [f"    {json.dumps(v)}" + ("," if k < len(value) - 1 else "") for k, v in enumerate(value)]
            lines.append("  ]" + comma)
        elif isinstance(value, dict) and value:
            lines.append(f"  {json.dumps(key)}: {{")
            kv = list(value.items())
            lines += [f"    {json.dumps(k)}: {json.dumps(v)}" + ("," if n < len(kv) - 1 else "")
                      for n, (k, v) in enumerate(kv)]
            lines.append("  }" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _strip_comment(line: str) -> str:
    """A Go source line without its // comment (string literals in const blocks have no //)."""
    return line.split("//", 1)[0].strip()


def const_block(src: str, anchor: str) -> list[str]:
    """Lines of the `const ( ... )` block that declares identifier `anchor`."""
    for m in re.finditer(r"^const \($(.*?)^\)$", src, re.S | re.M):
        body = m.group(1)
        if re.search(rf"^\s*{re.escape(anchor)}\b", body, re.M):
            return body.splitlines()
    raise LookupError(f"no const block declares {anchor}")


def eval_const_block(lines: list[str]) -> dict[str, int]:
    """Values of a Go const block's integer constants, with iota and implicit repetition."""
    values: dict[str, int] = {}
    iota, last_expr = 0, None
    for raw in lines:
        line = _strip_comment(raw)
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z_]\w*)(?:\s+[A-Za-z_][\w.]*)?(?:\s*=\s*(.+))?", line)
        if m is None:
            raise ValueError(f"cannot parse const spec {raw.strip()!r}")
        name, expr = m.group(1), m.group(2)
        if expr is None:
            expr = last_expr
        if expr is None:
            raise ValueError(f"const {name} has no value")
        values[name] = _eval(expr, iota, values)
        last_expr = expr
        iota += 1
    return values


def _eval(expr: str, iota: int, known: dict[str, int]) -> int:
    def sub(m: re.Match[str]) -> str:
        word = m.group(0)
        if word == "iota":
            return str(iota)
        if word in known:
            return str(known[word])
        if re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", word):
            return str(int(word, 0))
        raise ValueError(f"unknown identifier {word!r} in {expr!r}")

    py = re.sub(r"[A-Za-z_]\w*|0[xX][0-9a-fA-F]+|\d+", sub, expr)
    if not re.fullmatch(r"[0-9+\-*|&<>() ]+", py):
        raise ValueError(f"unsupported const expression {expr!r}")
    return int(eval(py, {"__builtins__": {}}, {}))  # only digits and operators reach here


# --------------------------------------------------------------------------- runtime constants


def wait_reasons(runtime2: str) -> list[str]:
    """waitReasonStrings as an array indexed by waitReason value (runtime2.go)."""
    numbers = eval_const_block(const_block(runtime2, "waitReasonZero"))
    m = re.search(r"^var waitReasonStrings = \[\.\.\.\]string\{$(.*?)^\}$", runtime2, re.S | re.M)
    if m is None:
        raise LookupError("no waitReasonStrings in runtime2.go")
    strings: dict[int, str] = {}
    for line in m.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("//"):
            continue
        e = re.fullmatch(r'(waitReason\w+):\s*"([^"\\]*)",', line)
        if e is None:
            raise ValueError(f"cannot parse waitReasonStrings entry {line!r}")
        strings[numbers[e.group(1)]] = e.group(2)
    return [strings.get(i, "") for i in range(max(strings) + 1)]


def g_status(runtime2: str) -> dict[str, int]:
    return {k: v for k, v in eval_const_block(const_block(runtime2, "_Gidle")).items() if k.startswith("_G")}


def p_status(runtime2: str) -> dict[str, int]:
    return {k: v for k, v in eval_const_block(const_block(runtime2, "_Pidle")).items() if k.startswith("_P")}


def _symtab(root: Path) -> tuple[str, str]:
    """Source declaring the funcID enum: internal/abi (1.21+) or runtime (1.19, 1.20)."""
    abi = root / "src" / "internal" / "abi" / "symtab.go"
    if abi.exists() and "FuncIDNormal" in (text := abi.read_text()):
        return text, "abi"
    return (root / "src" / "runtime" / "symtab.go").read_text(), "runtime"


def func_ids(root: Path) -> dict[str, int]:
    """funcID name -> value with the prefix dropped: "wrapper", "systemstack", "rt0_go"."""
    text, where = _symtab(root)
    block = eval_const_block(const_block(text, "FuncIDNormal" if where == "abi" else "funcID_normal"))
    out = {}
    for name, value in block.items():
        m = re.fullmatch(r"(?:FuncID|funcID)(_?)(\w+)", name)
        if m is None:
            continue
        short = m.group(2) if m.group(1) else m.group(2)[0].lower() + m.group(2)[1:]
        out[short] = value
    return out


def func_flags(root: Path) -> dict[str, int]:
    """funcFlag name -> bit, lower-cased: "topframe", "spwrite", "asm"."""
    text, where = _symtab(root)
    block = eval_const_block(const_block(text, "FuncFlagTopFrame" if where == "abi" else "funcFlag_TOPFRAME"))
    out = {}
    for name, value in block.items():
        m = re.fullmatch(r"(?:FuncFlag|funcFlag)_?(\w+)", name)
        if m is not None:
            out[m.group(1).lower()] = value
    return out


# --------------------------------------------------------------------------- pprof labels

# The constants of the classic hash map (runtime/map.go, Go <= 1.23) that a reader of a
# map[string]string needs: tophash marks, the growth flag, the bucket size.
MAP_CONSTS = ("emptyRest", "emptyOne", "evacuatedX", "evacuatedY", "evacuatedEmpty", "minTopHash",
              "hashWriting", "sameSizeGrow", "bucketCntBits")


def map_consts(root: Path) -> dict[str, int]:
    """MAP_CONSTS from runtime/map.go; {} where the runtime has no classic map (1.24+ swiss
    maps; the old map survives there only behind GOEXPERIMENT=noswissmap, which labels never
    meet: from 1.24 they are not a map). Names defined as `abi.X` (1.21+) are resolved in
    internal/abi/map.go."""
    map_go = root / "src" / "runtime" / "map.go"
    if not map_go.exists() or "\ntype hmap struct" not in (src := map_go.read_text()):
        return {}
    known: dict[str, int] = {}
    abi_map = root / "src" / "internal" / "abi" / "map.go"
    if abi_map.exists():
        abi = eval_const_block(const_block(abi_map.read_text(), "MapBucketCountBits"))
        known.update({f"abi.{k}": v for k, v in abi.items()})
    block = "\n".join(const_block(src, "emptyRest"))
    out = {}
    for name in MAP_CONSTS:
        m = re.search(rf"^\s*{name}\s*=\s*(.+)$", block, re.M)
        if m is None:
            raise LookupError(f"{map_go}: no constant {name}")
        expr = re.sub(r"\babi\.(\w+)", lambda q: str(known[f"abi.{q.group(1)}"]), _strip_comment(m.group(1)))
        out[name] = _eval(expr, 0, known)
    return out


def label_store(root: Path) -> str:
    """How runtime/pprof/label.go defines labelMap, the thing g.labels points at: "map" for
    `type labelMap map[string]string` (Go <= 1.23), "list" for a struct embedding a LabelSet
    or label.Set that holds a sorted slice (1.24+)."""
    src = (root / "src" / "runtime" / "pprof" / "label.go").read_text()
    if re.search(r"^type labelMap map\[string\]string$", src, re.M):
        return "map"
    if re.search(r"^type labelMap struct \{\n\t(LabelSet|label\.Set)\n\}$", src, re.M):
        return "list"
    raise LookupError("runtime/pprof/label.go: labelMap is neither a map[string]string nor a LabelSet struct")


# --------------------------------------------------------------------------- tables


def table_for(minor: str) -> tuple[Layout, dict[str, str]]:
    """The layout of Go `minor`: DWARF of a fresh probe build + constants from its GOROOT."""
    root = goroot(minor)
    binary = build(PROBE, BuildSpec(go=minor, cgo=False, stripped=False))
    dwarf = layout_from_dwarf(binary)
    if dwarf is None:
        raise SystemExit(f"{binary} has no usable DWARF")
    if dwarf.version != minor:
        raise SystemExit(f"{binary} says it was built by Go {dwarf.version}, not {minor}")
    runtime2 = (root / "src" / "runtime" / "runtime2.go").read_text()
    layout = replace(
        dwarf,
        source=f"table go{minor}",
        wait_reasons=tuple(wait_reasons(runtime2)),
        g_status=g_status(runtime2),
        p_status=p_status(runtime2),
        func_ids=func_ids(root),
        func_flags=func_flags(root),
        map_consts=map_consts(root),
        label_store=label_store(root),
    )
    toolchain = (root / "VERSION").read_text().splitlines()[0] if (root / "VERSION").exists() else ""
    if not toolchain:  # Debian's GOROOT has no VERSION file; the DWARF producer names it
        toolchain = f"go{minor}"
    return layout, {"toolchain": toolchain, "goarch": "amd64"}


def render(minor: str) -> str:
    layout, meta = table_for(minor)
    return dump_table(layout_to_dict(layout, **meta))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("versions", nargs="*", help="Go minor versions (default: the whole matrix)")
    ap.add_argument("--check", action="store_true", help="compare with the files; write nothing")
    args = ap.parse_args(argv)
    versions = args.versions or list(MATRIX)
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for minor in versions:
        text = render(minor)
        path = OUT / f"go{minor}.json"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    if stale:
        print("stale layout tables: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
