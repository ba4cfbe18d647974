"""Every public function, class and method of sftmix says in one line what it is for (a method
that overrides a documented one of its base class, e.g. a transformers callback, inherits that
line); every config field has a description (``test_strict_inputs``: what ``--help`` shows)."""

import importlib
import inspect
import pkgutil

import sftmix


def _modules():
    for info in pkgutil.walk_packages(sftmix.__path__, "sftmix."):
        if not info.name.endswith("__main__"):  # importing it would run the CLI
            yield importlib.import_module(info.name)


def test_every_public_name_has_a_docstring():
    missing = []
    for mod in _modules():
        assert inspect.getdoc(mod), f"module {mod.__name__} has no docstring"
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{mod.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, (property, classmethod,
                                                                                                        staticmethod))):
                        continue
                    if not inspect.getdoc(getattr(obj, attr)) and not (isinstance(member, property) and member.__doc__):
                        missing.append(f"{mod.__name__}.{name}.{attr}")
    assert not missing, f"{len(missing)} public names without a docstring: {', '.join(missing)}"
