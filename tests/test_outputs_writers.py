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
          "symlink": {"report/placing.py"}, "link": set()}


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


def _output_names() -> set[str]:
    from rca_gpu import runfiles

    names = set()
    for key, value in vars(runfiles).items():
        if key.isupper() and isinstance(value, str) and "." in value or key.endswith(("_DIR", "_IMAGES")) and \
                isinstance(value, str):
            names.add(value)
    return names - {"", "."}


def test_output_file_names_are_named_in_rca_gpu_runfiles_only():
    """One module names every output file of every command: elsewhere the names are imported, never written
    as a constant or joined to a path as a literal (messages and docstrings may quote them)."""
    names = _output_names()
    assert {"run.json", "clusters.parquet", "assign.json", "export.json", "study.parquet", "dataset.json",
            "report_files", "cache"} <= names
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = str(path.relative_to(PACKAGE))
        if relative == "runfiles.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            literal = None
            if isinstance(node, ast.Assign) and node in tree.body and isinstance(node.value, ast.Constant):
                literal = node.value.value
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant):
                literal = node.right.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("file", "has", "table", "json") and node.args and \
                    isinstance(node.args[0], ast.Constant):
                literal = node.args[0].value
            if isinstance(literal, str) and literal in names:
                found.append(f"{relative}:{node.lineno} {literal!r}")
    assert found == [], "import these names from rca_gpu.runfiles:\n" + "\n".join(found)
