"""setup.py declares what the code imports (every third-party module of the packages and benchmarks) and
the torch version whose API the code uses."""
import ast
import re
import runpy
import sys
from importlib.metadata import packages_distributions
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
CODE = ("models", "dataset", "finetune", "inference", "benchmarks", "webui")  # webui: once it exists
LOCAL = set(CODE) | {"tests"}


def declared():
    """setup()'s keyword arguments, from running setup.py with setup() captured."""
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(REPO / "setup.py"))
    return setup.call_args.kwargs


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def imported_modules():
    """{top-level module: first file importing it} over the project's code."""
    found = {}
    for folder in CODE:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_declared():
    kwargs = declared()
    requirements = list(kwargs["install_requires"]) + [r for extra in kwargs.get("extras_require", {}).values()
                                                       for r in extra]
    names = {_name(r) for r in requirements}
    dists = packages_distributions()
    missing = []
    for module, where in sorted(imported_modules().items()):
        if module in LOCAL or module in sys.stdlib_module_names or module == "__future__":
            continue
        candidates = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not candidates & names:
            missing.append(f"{module} (imported in {where}; distribution {', '.join(sorted(candidates))})")
    assert not missing, "not declared in setup.py: " + "; ".join(missing)


def test_torch_floor_covers_the_api_the_code_uses():
    uses_default_device = any("get_default_device" in p.read_text(encoding="utf-8")
                              for folder in CODE for p in (REPO / folder).rglob("*.py"))
    torch_req = next(r for r in declared()["install_requires"] if _name(r) == "torch")
    floor = re.search(r">=\s*(\d+)\.(\d+)", torch_req)
    assert floor, f"torch is declared without a lower bound: {torch_req!r}"
    if uses_default_device:  # torch.get_default_device() exists since torch 2.3
        assert (int(floor.group(1)), int(floor.group(2))) >= (2, 3), torch_req
