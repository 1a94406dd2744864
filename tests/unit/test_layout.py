"""The package's layout: no import cycles, and dependencies that run one way.

Layers, lowest first (a module may import its own layer and those below it):

    base (runtime/, errors, presets) <- models/ <- data/ <- training/ <- inference/ <- evaluation/ <- CLIs

The base is runtime/, errors.py and presets.py. The CLIs are
nwt_jax/{train,tokenize,generate,evaluate,demo,bench}.py and their shared cli.py; no library
module imports them. models/ imports only models/. evaluation/metrics.py is pure (numpy, models/ +
data/), so training/ may import it (the dVAE's eval computes PSNR with it). Imports sit at the top
of modules; only the heavy optional dependencies that GPU machines lack (`HEAVY_OPTIONAL`) are
imported inside functions.

Every `import` is counted, at any depth (a function-level import still closes a cycle), and so are
the modules nwt_jax/train.py names in its `TRAINERS` dict and literal `importlib.import_module`
arguments. The checker works on a {module: source} dict, so the tests below can plant violations
and see it catch them.
"""

import ast
import pathlib

PACKAGE = "nwt_jax"
ROOT = pathlib.Path(__file__).resolve().parents[2] / PACKAGE

HEAVY_OPTIONAL = frozenset({"tensorflow", "tensorflow_datasets", "torch", "librosa", "PIL",
                            "dm_pix", "matplotlib", "tensorboard", "tqdm", "apache_beam",
                            "imageio_ffmpeg", "cv2",
                            # Folders of the repository, not installed with the package: the
                            # TFDS builder (imports TFDS) and the benchmarks (torch peer).
                            "nwt_clips", "benchmarks"})
CLI_MODULES = frozenset(f"{PACKAGE}.{m}" for m in
                        ("train", "tokenize", "generate", "evaluate", "demo", "bench", "cli",
                         "footage", "report"))
LAYERS = ("base", "models", "data", "training", "inference", "evaluation", "cli")
# The first name under nwt_jax -> its layer; a new top-level module must be placed here.
# presets.py (the config files' preset parser, imported by configs/*.py and tests) imports nothing
# of the package, so it sits at the base, where anything may use it.
TOP_LEVEL = {"__init__": "base", "errors": "base", "runtime": "base", "presets": "base",
             "models": "models", "data": "data", "training": "training",
             "inference": "inference", "evaluation": "evaluation",
             **{m.split(".")[1]: "cli" for m in CLI_MODULES}}
PURE_METRICS = f"{PACKAGE}.evaluation.metrics"


def package_sources(root: pathlib.Path = ROOT) -> dict[str, str]:
  """{dotted module name: source} of every .py file under `root` (a package __init__ is the
  package's name)."""
  sources = {}
  for path in sorted(root.rglob("*.py")):
    parts = (root.name,) + path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    sources[".".join(parts)] = path.read_text()
  return sources


def _is_package(module: str, sources: dict[str, str]) -> bool:
  return module == PACKAGE or any(m.startswith(module + ".") for m in sources)


def _path(module: str, sources: dict[str, str]) -> str:
  return module.replace(".", "/") + ("/__init__.py" if _is_package(module, sources) else ".py")


def layer_of(module: str) -> str | None:
  """The layer of an nwt_jax module, or None where `TOP_LEVEL` places none."""
  parts = module.split(".")
  return TOP_LEVEL.get(parts[1] if len(parts) > 1 else "__init__")


class _Import:
  """One import in `importer` at `line`: `target` (a module of the sources, or for other
  libraries the imported name), whether it is `internal` and whether it sits inside a function
  or class (`nested`); `dynamic` for names imported by string."""

  def __init__(self, importer, line, target, internal, nested, dynamic=False):
    self.importer, self.line, self.target = importer, line, target
    self.internal, self.nested, self.dynamic = internal, nested, dynamic


def imports(sources: dict[str, str]) -> list[_Import]:
  """Every import of every module in `sources`, at any depth."""
  found = []
  for module, source in sources.items():
    tree = ast.parse(source, filename=_path(module, sources))
    package = module if _is_package(module, sources) else module.rpartition(".")[0]

    def add(name, line, nested, dynamic=False, module=module):
      internal = name == PACKAGE or name.startswith(PACKAGE + ".")
      found.append(_Import(module, line, name, internal, nested, dynamic))

    def visit(node, nested):
      for child in ast.iter_child_nodes(node):
        inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                             ast.ClassDef, ast.Lambda))
        if isinstance(child, ast.Import):
          for alias in child.names:
            add(alias.name, child.lineno, nested)
        elif isinstance(child, ast.ImportFrom):
          base = child.module or ""
          if child.level:
            anchor = package.split(".")[:len(package.split(".")) - (child.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
          for alias in child.names:
            full = f"{base}.{alias.name}"
            # `from pkg import mod` loads pkg.mod; `from mod import name` loads mod.
            add(full if full in sources else base, child.lineno, nested)
        elif (isinstance(child, ast.Call) and child.args
              and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str)
              and ((isinstance(child.func, ast.Attribute) and child.func.attr == "import_module")
                   or (isinstance(child.func, ast.Name)
                       and child.func.id in ("import_module", "__import__")))):
          add(child.args[0].value, child.lineno, nested, dynamic=True)
        elif (module == f"{PACKAGE}.train" and isinstance(child, (ast.Assign, ast.AnnAssign))
              and "TRAINERS" in [t.id for t in (getattr(child, "targets", None)
                                                 or [child.target]) if isinstance(t, ast.Name)]
              and isinstance(child.value, ast.Dict)):
          for value in child.value.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
              add(value.value, value.lineno, nested, dynamic=True)
        visit(child, inner)

    visit(tree, False)
  return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (or with a self-import), each
  sorted (Tarjan's algorithm, iterative)."""
  index, low, on_stack, stack, components = {}, {}, set(), [], []
  for start in sorted(edges):
    if start in index:
      continue
    work = [(start, iter(sorted(edges.get(start, ()))))]
    index[start] = low[start] = len(index)
    stack.append(start)
    on_stack.add(start)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(edges.get(child, ())))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.append(member)
          if member == node:
            break
        if len(component) > 1 or node in edges.get(node, ()):
          components.append(sorted(component))
  return sorted(components)


def layout_violations(sources: dict[str, str]) -> list[str]:
  """Every breach of the layout rules (module docstring) in `sources`, one line each, as
  'path:line: what'."""
  problems = []
  found = imports(sources)

  def where(imp):
    return f"{_path(imp.importer, sources)}:{imp.line}"

  for module in sorted(sources):
    if layer_of(module) is None:
      problems.append(f"{_path(module, sources)}: no layer: place {module.split('.')[1]!r} in "
                      "tests/unit/test_layout.py's TOP_LEVEL")
  for imp in found:
    what = f"{imp.importer} imports {imp.target}" + (" (by name)" if imp.dynamic else "")
    if imp.nested and not imp.dynamic and imp.target.split(".")[0] not in HEAVY_OPTIONAL:
      problems.append(f"{where(imp)}: function-level import: {what} (import it at the top of the "
                      "module; only HEAVY_OPTIONAL libraries may be imported inside functions)")
    if not imp.internal:
      continue
    if imp.target not in sources:
      problems.append(f"{where(imp)}: {what}, which is no module of the package")
      continue
    if imp.target == imp.importer:
      continue  # `from nwt_jax.x import y` inside x's own package: x/__init__ is already loaded
    ours, theirs = layer_of(imp.importer), layer_of(imp.target)
    if ours is None or theirs is None:
      continue
    if imp.target in CLI_MODULES and imp.importer not in CLI_MODULES and ours != "cli":
      problems.append(f"{where(imp)}: library module imports a CLI module: {what}")
    elif ours == "models" and theirs != "models":
      problems.append(f"{where(imp)}: models/ may import only models/: {what}")
    elif imp.importer == PURE_METRICS and theirs not in ("data", "models"):
      problems.append(f"{where(imp)}: evaluation/metrics.py is pure (numpy, data/, models/): "
                      f"{what}")
    elif imp.target == PURE_METRICS and LAYERS.index(ours) >= LAYERS.index("training"):
      pass  # the pure metrics serve training/ too
    elif LAYERS.index(theirs) > LAYERS.index(ours):
      problems.append(f"{where(imp)}: upward import ({ours} -> {theirs}): {what}")

  edges: dict[str, set[str]] = {}
  for imp in found:
    if imp.internal and imp.target in sources and imp.target != imp.importer:
      edges.setdefault(imp.importer, set()).add(imp.target)
  for component in _cycles(edges):
    members = set(component)
    links = sorted({f"{where(i)} -> {i.target}" for i in found
                    if i.importer in members and i.target in members})
    problems.append(f"import cycle among {', '.join(component)}: " + "; ".join(links))
  return problems


# ----------------------------------------------------------------------------------------------


def test_the_package_keeps_its_layout():
  sources = package_sources()
  assert f"{PACKAGE}.models.prior" in sources and f"{PACKAGE}.train" in sources
  problems = layout_violations(sources)
  assert not problems, "\n".join(["", *problems])


def test_the_checker_catches_a_function_level_cycle_and_an_upward_import():
  clean = {
      "nwt_jax": "",
      "nwt_jax.models": "",
      "nwt_jax.models.a": "from nwt_jax.models import b\n",
      "nwt_jax.models.b": "import numpy as np\n",
      "nwt_jax.training": "",
      "nwt_jax.training.loop": "from nwt_jax.models import a\n"
                               "from nwt_jax.evaluation import metrics\n",
      "nwt_jax.evaluation": "",
      "nwt_jax.evaluation.metrics": "import numpy as np\n\ndef f():\n  import dm_pix\n",
      "nwt_jax.train": 'TRAINERS = {"loop": "nwt_jax.training.loop"}\n',
  }
  assert layout_violations(clean) == []

  # b imports a inside a function: a -> b -> a.
  cycle = dict(clean, **{"nwt_jax.models.b": "def f():\n  from nwt_jax.models import a\n"})
  problems = layout_violations(cycle)
  assert any(p.startswith("import cycle among nwt_jax.models.a, nwt_jax.models.b:")
             and "nwt_jax/models/b.py:2 -> nwt_jax.models.a" in p for p in problems), problems
  assert any(p.startswith("nwt_jax/models/b.py:2: function-level import") for p in problems)

  # The same cycle through a relative import at the top of the module.
  relative = dict(clean, **{"nwt_jax.models.b": "from . import a\n"})
  assert any(p.startswith("import cycle") for p in layout_violations(relative))

  # A model reaching up into training/ (and, through the trainers dict, a cycle with train.py).
  upward = dict(clean, **{"nwt_jax.models.b": "from nwt_jax.training.loop import step\n"})
  problems = layout_violations(upward)
  assert ("nwt_jax/models/b.py:1: models/ may import only models/: nwt_jax.models.b imports "
          "nwt_jax.training.loop") in problems, problems
  assert any(p.startswith("import cycle among nwt_jax.models.a, nwt_jax.models.b, "
                          "nwt_jax.training.loop") for p in problems), problems

  # data/ below training/, a library module importing a CLI, a non-heavy lazy import, impure
  # metrics, and a cycle closed only by the trainers dict.
  more = dict(clean, **{
      "nwt_jax.data": "",
      "nwt_jax.data.pipe": "import nwt_jax.training.loop\n",
      "nwt_jax.evaluation.jobs": "def f():\n  import etils\n  from nwt_jax import train\n",
      "nwt_jax.inference": "", "nwt_jax.inference.a": "",
      "nwt_jax.evaluation.metrics": "from nwt_jax.inference import a\n",
      "nwt_jax.training.loop": "from nwt_jax import train\n",
  })
  problems = layout_violations(more)
  assert ("nwt_jax/data/pipe.py:1: upward import (data -> training): nwt_jax.data.pipe imports "
          "nwt_jax.training.loop") in problems, problems
  assert any(p.startswith("nwt_jax/evaluation/jobs.py:2: function-level import")
             and "imports etils" in p for p in problems), problems
  assert ("nwt_jax/evaluation/jobs.py:3: library module imports a CLI module: "
          "nwt_jax.evaluation.jobs imports nwt_jax.train") in problems, problems
  assert ("nwt_jax/evaluation/metrics.py:1: evaluation/metrics.py is pure (numpy, data/, "
          "models/): nwt_jax.evaluation.metrics imports nwt_jax.inference.a") in problems, problems
  assert any(p.startswith("import cycle among nwt_jax.train, nwt_jax.training.loop:")
             and "nwt_jax/train.py:1 -> nwt_jax.training.loop" in p for p in problems), problems

  # A stale import after a move, and a new top-level module nobody placed in a layer.
  stale = dict(clean, **{"nwt_jax.models.b": "from nwt_jax.models.gone import thing\n",
                         "nwt_jax.helpers": ""})
  problems = layout_violations(stale)
  assert any("nwt_jax.models.b imports nwt_jax.models.gone, which is no module" in p
             for p in problems), problems
  assert any(p.startswith("nwt_jax/helpers.py: no layer") for p in problems), problems
