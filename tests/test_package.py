"""The package surface: what `import diffjax` loads and exports."""

import ast
import inspect
import pathlib
import subprocess
import sys
from collections.abc import Sequence

import diffjax


def test_import_does_not_load_tensorflow_tfds_orbax_absl_flax_or_diffrax():
    code = (
        "import sys, diffjax\n"
        "heavy = ('tensorflow', 'tensorflow_datasets', 'orbax', 'grain', 'chex', 'absl', 'flax', 'diffrax')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_every_exported_name_is_a_documented_function_class_or_constant():
    for name in diffjax.__all__:
        value = getattr(diffjax, name)
        if callable(value):
            assert inspect.getdoc(value), f"diffjax.{name} has no docstring"
        else:
            assert isinstance(value, (tuple, dict, frozenset, Sequence)), (name, type(value))
    assert sorted(diffjax.__all__) == sorted(set(diffjax.__all__))


def test_lazy_names_are_their_modules_objects():
    from diffjax.images import make_grid
    from diffjax.training.loop import train_and_evaluate

    assert diffjax.train_and_evaluate is train_and_evaluate
    assert diffjax.make_image_grid is make_grid
    from diffjax.models import UNet

    assert diffjax.UNet is UNet


PACKAGE = pathlib.Path(diffjax.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, module: str, modules: set[str]) -> set[str]:
    """Every diffjax module ``path`` imports, at module level or inside functions.

    ``from X import Y`` is an import of module X.Y when that is a module (a submodule; the
    package X is its parent, necessarily loaded first), else of module X.
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] == "diffjax")
    return found


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        # "from diffjax.x import y" names module diffjax.x.y if that is a module, else diffjax.x.
        graph[module] = {name for name in _imports(path, module, set(paths)) if name in paths}
        graph[module] -= {module}
    return graph


def test_no_import_cycle_even_inside_functions():
    """A depth-first search over every import of every module (function-level ones too)."""
    graph = _import_graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package's __init__ importing its own submodules is not a cycle of the code.
    cycles = [cycle for cycle in cycles if not all(m.startswith(cycle[0]) for m in cycle[1:])]
    assert cycles == [], cycles


LAYERS = {
    # The math: arrays in, arrays out; no network, config, data or devices.
    "math": ("diffjax.schedules", "diffjax.processes", "diffjax.predictions", "diffjax.diffusion",
             "diffjax.losses", "diffjax.likelihood", "diffjax.samplers", "diffjax.names"),
    "models": ("diffjax.models",),
    "training": ("diffjax.training", "diffjax.data", "diffjax.evaluation"),
    "pipelines": ("diffjax.pipelines",),
    "cli": ("diffjax.cli", "diffjax.train", "diffjax.sample", "diffjax.evaluate",
            "diffjax.reflow"),
}  # fmt: skip
FORBIDDEN = {
    "math": ("models", "training", "pipelines", "cli", "diffjax.codecs", "diffjax.generation"),
    "models": ("training", "pipelines", "cli"),
    "training": ("pipelines", "cli"),
    "pipelines": ("cli",),
}


def _in_layer(module: str, layer: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in LAYERS.get(layer, (layer,)))


def test_the_layers_import_only_downwards():
    """DESIGN.md: the math never imports models or training, models never import training,
    training never imports pipelines or the CLIs, and nothing imports diffjax/__init__.py from
    inside the package."""
    graph = _import_graph()
    problems = []
    for layer, forbidden in FORBIDDEN.items():
        for module, targets in graph.items():
            if not _in_layer(module, layer):
                continue
            for other in forbidden:
                bad = sorted(target for target in targets if _in_layer(target, other))
                problems += [f"{module} imports {target}" for target in bad]
    problems += [f"{module} imports diffjax/__init__" for module, t in graph.items()
                 if "diffjax" in t and module != "diffjax"]  # fmt: skip
    assert problems == [], problems
