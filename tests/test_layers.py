"""The packages depend one way: app -> ``generation`` -> models (``tokenizer``, ``unitok.lm``) -> core.

Every import statement of every module counts (function-local and ``TYPE_CHECKING`` ones too), and
so does a string that names a project module (the lazy-export tables import through those).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("unitok", "tokenizer", "generation")
ORDER = ("core", "models", "generation", "app")
# Module prefix -> layer; the longest matching prefix decides ("unitok" itself, whose
# `from unitok import UniTokPipeline` reaches the pipeline, covers only itself). A module no prefix
# covers fails the test, so a new module has to be given its place.
LAYERS = {
    "unitok": "app",
    "unitok.cli": "app",
    "unitok.commands": "app",
    "unitok.api": "app",
    "unitok.evaluation": "app",
    "generation": "generation",
    "tokenizer": "models",
    "unitok.lm": "models",
    "unitok.vocabulary": "core",
    "unitok.data": "core",
    "unitok.errors": "core",
    "unitok.atomic": "core",
    "unitok.schedules": "core",
    "unitok.precision": "core",
    "unitok.progress_bar": "core",
    "unitok.run_layout": "core",
    "unitok.callbacks": "core",
    "unitok.lightning_runs": "core",
    "unitok.lazy_exports": "core",
    "unitok.default_model": "core",
}
_MODULE_NAME = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+$")  # dotted: a bare "unitok" is a word


def layer_of(module: str) -> str | None:
    matches = [prefix for prefix in LAYERS
               if module == prefix or (module.startswith(prefix + ".") and prefix != "unitok")]
    return LAYERS[max(matches, key=len)] if matches else None


def project_sources() -> dict[str, str]:
    """Module name -> source of every module of the three packages."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            sources[name] = path.read_text()
    return sources


def imported_modules(source: str, known: set[str]) -> set[str]:
    """Project modules a source imports, by statement or by a string naming one."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from unitok import default_model` imports a submodule
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.match(node.value):
            found.add(node.value)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def layer_violations(sources: dict[str, str]) -> list[str]:
    """One line per import that goes up the layers, or per module without a layer."""
    known = set(sources) | set(project_sources())
    problems = []
    for module, source in sorted(sources.items()):
        own = layer_of(module)
        if own is None:
            problems.append(f"{module} has no layer: add its prefix to LAYERS")
            continue
        for target in sorted(imported_modules(source, known)):
            theirs = layer_of(target)
            if theirs is not None and ORDER.index(theirs) > ORDER.index(own):
                problems.append(f"{module} ({own}) imports {target} ({theirs})")
    return problems


def test_every_import_goes_down_the_layers():
    assert layer_violations(project_sources()) == []


def test_the_check_catches_an_import_that_goes_up():
    assert layer_violations({"unitok.vocabulary": "import generation.pipeline\n"}) == [
        "unitok.vocabulary (core) imports generation.pipeline (generation)"]
    lazy = 'from unitok.lazy_exports import lazy_getattr\n__getattr__ = lazy_getattr("x", {"P": "generation.pipeline"})\n'
    assert layer_violations({"unitok.data.shapes": lazy}) == [
        "unitok.data.shapes (core) imports generation.pipeline (generation)"]
    local = "def load():\n    from unitok.commands import generate\n"
    assert layer_violations({"tokenizer.model": local}) == ["tokenizer.model (models) imports unitok.commands.generate (app)"]
    assert layer_violations({"unitok.newthing": ""}) == ["unitok.newthing has no layer: add its prefix to LAYERS"]
