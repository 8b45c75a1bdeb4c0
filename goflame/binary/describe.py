"""What goflame knows about a binary, as one plain dict (the data behind `goflame inspect`)."""

from __future__ import annotations

from typing import Any

from goflame.binary.gobinary import GoBinary
from goflame.errors import GoflameError
from goflame.symbolize import Symbolizer


def describe(b: GoBinary, pcs: list[int] | tuple[int, ...] = ()) -> dict[str, Any]:
    bi = b.buildinfo
    tab = b.pclntab
    info: dict[str, Any] = {
        "path": str(b.path),
        "go_version": b.go_version,
        "main_path": bi.path,
        "module": ({"path": bi.main.path, "version": bi.main.version, "sum": bi.main.sum} if bi.main else None),
        "dependencies": [{"path": d.path, "version": d.version} for d in bi.deps],
        "build_settings": dict(bi.settings),
        "arch": b.arch,
        "ptr_size": tab.ptr_size,
        "pc_quantum": tab.quantum,
        "pclntab": {"format": b.pclntab_format, "magic": f"{tab.magic:#x}", "address": f"{b.pclntab_addr:#x}",
                    "functions": tab.nfunc},
        "text": {"start": f"{b.text_range[0]:#x}", "end": f"{b.text_range[1]:#x}"},
        "stripped": b.stripped,
        "dwarf": b.has_dwarf,
        "cgo": b.uses_cgo,
        "pie": b.is_pie,
        "dynamic": b.elf.is_dynamic,
        "moduledata": ({"address": f"{b.moduledata.addr:#x}", "found_by": b.moduledata.how}
                       if b.moduledata else None),
    }
    try:
        lay = b.layout
        info["layout"] = {"source": lay.source, "version": lay.version}
    except GoflameError as e:
        info["layout"] = {"source": None, "error": str(e)}
    try:
        glb = b.globals
        info["globals"] = {g.name: {"address": f"{g.addr:#x}", "found_by": g.how} for g in glb}
        tls = getattr(glb, "g_tls_offset", None)
        if tls is not None:
            info["g_tls_offset"] = tls
    except GoflameError as e:
        info["globals"] = {}
        info["globals_error"] = str(e)
    if pcs:
        sym = Symbolizer(b)
        info["pcs"] = [
            {"pc": f"{pc:#x}",
             "frames": [{"function": f.function, "file": f.file, "line": f.line, "inlined": f.inlined}
                        for f in sym.frames(pc)] if sym.function_name(pc) else []}
            for pc in pcs
        ]
    return info


def render_text(info: dict[str, Any]) -> str:
    yes = {True: "yes", False: "no"}
    lines = [
        f"binary          {info['path']}",
        f"go version      {info['go_version']}",
    ]
    mod = info.get("module")
    if mod:
        lines.append(f"module          {mod['path']} {mod['version']}".rstrip())
    if info.get("main_path"):
        lines.append(f"main package    {info['main_path']}")
    if info["dependencies"]:
        lines.append(f"dependencies    {len(info['dependencies'])}: " + ", ".join(
            f"{d['path']}@{d['version']}" for d in info["dependencies"][:8])
            + (" ..." if len(info["dependencies"]) > 8 else ""))
    settings = info["build_settings"]
    if settings:
        lines.append("build settings  " + " ".join(f"{k}={v}" for k, v in settings.items()))
    lines += [
        f"arch            {info['arch']} (pointer size {info['ptr_size']}, pc quantum {info['pc_quantum']})",
        f"pclntab         Go {info['pclntab']['format']}+ format (magic {info['pclntab']['magic']}) at "
        f"{info['pclntab']['address']}, {info['pclntab']['functions']} functions",
        f"text            {info['text']['start']} - {info['text']['end']}",
        f"stripped        {yes[info['stripped']]}" + ("" if info["stripped"] else " (has .symtab)")
        + (", DWARF" if info["dwarf"] else ", no DWARF"),
        f"cgo             {yes[info['cgo']]}",
        f"PIE             {yes[info['pie']]}",
        f"linking         {'dynamic' if info['dynamic'] else 'static'}",
    ]
    md = info.get("moduledata")
    if md:
        lines.append(f"moduledata      {md['address']} (found by {md['found_by']})")
    lay = info["layout"]
    lines.append(f"layout          {lay['source'] or 'unavailable: ' + lay.get('error', '')}")
    if info.get("globals"):
        lines.append("runtime globals")
        width = max(len(n) for n in info["globals"])
        for name, g in info["globals"].items():
            lines.append(f"  {name:<{width}}  {g['address']:>12}  {g['found_by']}")
    if "g_tls_offset" in info:
        lines.append(f"g TLS offset    {info['g_tls_offset']} (from the thread pointer)")
    if info.get("globals_error"):
        lines.append(f"runtime globals unavailable: {info['globals_error']}")
    for entry in info.get("pcs", []):
        if not entry["frames"]:
            lines.append(f"{entry['pc']}: not in Go text")
            continue
        lines.append(f"{entry['pc']}:")
        for f in entry["frames"]:
            mark = " (inlined)" if f["inlined"] else ""
            lines.append(f"  {f['function']}{mark}\n      {f['file']}:{f['line']}")
    return "\n".join(lines)
