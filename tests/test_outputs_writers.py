"""rca_gpu.outputs.write_atomic is the one writer of output files: no module writes a file under its final
name itself (a crash, a full disk or a second process would leave half a file there)."""

from __future__ import annotations

import ast
from pathlib import Path

import rca_gpu

PACKAGE = Path(rca_gpu.__file__).parent
#: Calls that write a file at their first argument (or at ``path=``).
WRITERS = {"write_text", "write_bytes", "save", "to_parquet", "to_csv", "to_json", "write_table", "save_file",
           "save_model", "copyfile", "copy", "copy2", "copytree", "savez", "savez_compressed", "tofile"}
#: Moves and links: only the modules that own them (rca_gpu.outputs renames temporary files; a run keeps its
#: earlier outputs aside; export links images, which are no output files).
MOVERS = {"replace": {"outputs.py", "runfolder.py"}, "rename": {"outputs.py", "runfolder.py"},
          "symlink": {"report/export.py"}, "link": set()}


def _is_tmp(node: ast.AST) -> bool:
    """``tmp`` or ``str(tmp)``: the temporary name write_atomic hands to its callback."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str" and node.args:
        node = node.args[0]
    return isinstance(node, ast.Name) and node.id == "tmp"


def _writes_a_final_name(call: ast.Call) -> bool:
    """A writer call whose target is not the ``tmp`` name write_atomic hands to its callback."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name == "open":
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+")):
            return False
    elif name not in WRITERS:
        return False
    if name in ("to_csv", "to_json") and not call.args and all(k.arg != "path_or_buf" for k in call.keywords):
        return False  # returns the text
    if name in ("copy", "save") and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
            func.value.id in ("dict", "self", "list"):
        return False
    arguments = [*call.args, *(k.value for k in call.keywords)]
    return bool(arguments) and not any(_is_tmp(a) for a in arguments)  # write(data, tmp), save(tmp)...


def test_every_output_file_goes_through_write_atomic():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = str(path.relative_to(PACKAGE))
        if relative == "outputs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            if owner == "os" and name in MOVERS and relative not in MOVERS[name]:
                found.append(f"{relative}:{node.lineno} os.{name}")
            elif owner == "outputs" or (isinstance(func, ast.Name) and name.startswith("write_")):
                continue  # rca_gpu.outputs' writers, also imported by name (write_atomic, write_json...)
            elif _writes_a_final_name(node) and owner not in ("outputs",):
                found.append(f"{relative}:{node.lineno} {ast.unparse(node)[:80]}")
    assert found == [], "write through rca_gpu.outputs.write_atomic:\n" + "\n".join(found)
