"""What ``everlearn ls`` lists about stage kinds and strategies, read from their declarations'
source text instead of importing them.

The kinds (``KIND = Kind(...)`` in a module of everlearn.stages) and the strategies (``Strategy``
subclasses in everlearn.strategies) live in modules that import torch and PEFT for their work:
importing them to print a few strings took ~15 s. What ``ls`` prints of them is written as
literals (a kind's name, order, description and metrics; a strategy's name, summary and the
fields of its ``Options`` dataclass, each with a default and a help text), so it is read from
the modules' syntax trees with ``ast.literal_eval``: the declarations stay the one place each
thing is written, nothing is imported, and tests/unit/test_listing.py checks that the listing
equals the imported registries. A declaration this reader cannot follow (a computed value)
makes it import the registry instead: slower, never wrong.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STRATEGY_ROOT = ("everlearn.strategies.base", "Strategy")
FACTORIES = {"list", "dict", "set", "tuple"}  # default_factory values read as empty literals


class NotLiteral(Exception):
    """A declaration whose value is computed: read the registry by importing it."""


@dataclass(frozen=True)
class KindEntry:
    name: str
    order: int
    description: str
    metrics: tuple[str, ...]


@dataclass(frozen=True)
class StrategyEntry:
    name: str
    summary: str
    options: list[tuple[str, Any, str]]  # (name, default, help), as schema.option_fields


def kind_entries(package: str = "everlearn.stages") -> list[KindEntry]:
    """Every stage kind in order, as ``ls`` prints it."""
    try:
        return _static_kinds(package)
    except NotLiteral:
        from everlearn.stages import get_kind, kinds

        return [KindEntry(k.name, k.order, k.description, tuple(k.metrics))
                for k in map(get_kind, kinds())]


def strategy_entries(package: str = "everlearn.strategies") -> list[StrategyEntry]:
    """Every strategy, sorted by name, as ``ls`` prints it."""
    try:
        return _Classes(package).strategies()
    except NotLiteral:
        from everlearn.schema import option_fields
        from everlearn.strategies import STRATEGIES

        return [StrategyEntry(name, cls.summary, option_fields(cls))
                for name, cls in sorted(STRATEGIES.items())]


def _module_path(name: str) -> Path:
    """The source file (or package directory) of a dotted everlearn module, found without
    importing it or its parent packages (``importlib.util.find_spec`` runs a subpackage's
    parents, and everlearn.strategies' ``__init__`` imports every strategy)."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise NotLiteral(name)
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest)
    if path.is_dir():
        return path
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    raise NotLiteral(name)


def _package_dir(package: str) -> list[str]:
    path = _module_path(package)
    if not path.is_dir():
        raise NotLiteral(package)
    return [str(path)]


def _literal(node: ast.AST | None) -> Any:
    if node is None:
        raise NotLiteral("no value")
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise NotLiteral(ast.dump(node)) from None


def _static_kinds(package: str) -> list[KindEntry]:
    """Module-level ``KIND = Kind(name=..., order=..., description=..., metrics=...)``."""
    found = []
    for info in pkgutil.iter_modules(_package_dir(package)):
        tree = ast.parse(Path(info.module_finder.path, f"{info.name}.py").read_text("utf-8"))
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and any(isinstance(t, ast.Name) and t.id == "KIND" for t in node.targets)):
                kw = {k.arg: k.value for k in node.value.keywords}
                found.append(KindEntry(_literal(kw.get("name")), _literal(kw.get("order")),
                                       _literal(kw.get("description")),
                                       tuple(_literal(kw.get("metrics")))))
    return sorted(found, key=lambda k: k.order)


class _Classes:
    """The classes of a package's modules (and of the modules they import from) by
    ``(module, name)``, with their bases resolved through ``from X import Y`` statements."""

    def __init__(self, package: str):
        self.package = package
        self.roots = {"everlearn", package.split(".")[0]}  # the packages whose classes count
        self.trees: dict[str, tuple[dict[str, ast.ClassDef], dict[str, tuple[str, str]]]] = {}

    def module(self, name: str):
        """(classes by name, imported names -> (module, name)) of module ``name``."""
        if name not in self.trees:
            path = _module_path(name)
            tree = ast.parse((path / "__init__.py" if path.is_dir() else path).read_text("utf-8"))
            classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
            imports = {(a.asname or a.name): (n.module, a.name) for n in tree.body
                       if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
                       for a in n.names}
            self.trees[name] = (classes, imports)
        return self.trees[name]

    def resolve(self, module: str, name: str) -> tuple[str, str] | None:
        """Where the class ``name`` used in ``module`` is defined (None: not ours)."""
        classes, imports = self.module(module)
        if name in classes:
            return module, name
        if name in imports and imports[name][0].split(".")[0] in self.roots:
            return self.resolve(*imports[name])
        return None

    def mro(self, ref: tuple[str, str]) -> list[tuple[str, str]]:
        """``ref`` and its bases, depth first (single inheritance, as the strategies use)."""
        order = [ref]
        for base in self.module(ref[0])[0][ref[1]].bases:
            found = self.resolve(ref[0], base.id) if isinstance(base, ast.Name) else None
            order += [r for r in (self.mro(found) if found else []) if r not in order]
        return order

    def attribute(self, ref: tuple[str, str], attr: str) -> tuple[str, ast.AST]:
        """(the module that assigns it, the value node) of a class attribute, inherited too."""
        for module, name in self.mro(ref):
            for node in self.module(module)[0][name].body:
                target = node.target if isinstance(node, ast.AnnAssign) else (
                    node.targets[0] if isinstance(node, ast.Assign) else None)
                if isinstance(target, ast.Name) and target.id == attr and node.value:
                    return module, node.value
        raise NotLiteral(f"{ref}.{attr}")

    def strategies(self) -> list[StrategyEntry]:
        """The registry's rule (everlearn.strategies): a Strategy subclass with a name."""
        entries = {}
        for info in pkgutil.iter_modules(_package_dir(self.package)):
            if info.name.startswith("_") or info.name == "base" or info.ispkg:
                continue
            module = f"{self.package}.{info.name}"
            for cls in self.module(module)[0]:
                ref = (module, cls)
                if STRATEGY_ROOT not in self.mro(ref):
                    continue
                name = _literal(self.attribute(ref, "name")[1])
                if name:
                    entries[name] = StrategyEntry(name, _literal(self.attribute(ref, "summary")[1]),
                                                  self.options(ref))
        return [entries[n] for n in sorted(entries)]

    def options(self, ref: tuple[str, str]) -> list[tuple[str, Any, str]]:
        module, node = self.attribute(ref, "Options")
        found = self.resolve(module, node.id) if isinstance(node, ast.Name) else None
        if found is None:
            raise NotLiteral(f"{ref}.Options")
        fields: dict[str, tuple[Any, str]] = {}
        for mod, name in reversed(self.mro(found)):  # base fields first, as dataclasses do
            for item in self.module(mod)[0][name].body:
                if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                        and "ClassVar" not in ast.unparse(item.annotation)):
                    fields[item.target.id] = self.field(mod, item.value)
        return [(n, default, help_) for n, (default, help_) in fields.items()]

    def field(self, module: str, value: ast.AST | None) -> tuple[Any, str]:
        """(default, help) of one dataclass field: ``dataclasses.field(default=...,
        metadata={"help": ...})``, ``everlearn.schema.field(default, help)`` or a literal."""
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and value.func.id == "field"):
            return _literal(value), ""
        source = self.module(module)[1].get("field", ("", ""))[0]
        kw = {k.arg: k.value for k in value.keywords}
        if source == "everlearn.schema":
            args = list(value.args) + [None, None]
            default = _literal(kw.get("default", args[0]))
            help_node = kw.get("help", args[1])
            return default, _literal(help_node) if help_node is not None else ""
        if source != "dataclasses":
            raise NotLiteral(f"{module}: field from {source!r}")
        if "default_factory" in kw:
            factory = kw["default_factory"]
            if not (isinstance(factory, ast.Name) and factory.id in FACTORIES):
                raise NotLiteral(ast.dump(factory))
            default = getattr(builtins, factory.id)()
        else:
            default = _literal(kw.get("default"))
        metadata = _literal(kw["metadata"]) if "metadata" in kw else {}
        return default, metadata.get("help", "")
