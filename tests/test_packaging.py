"""setup.cfg: the installed commands point at the entry points; every package is installed."""
import configparser
import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cfg():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_console_scripts_resolve_to_the_entry_points():
    scripts = dict(line.split(" = ") for line in _cfg()["options.entry_points"]["console_scripts"].strip().splitlines())
    assert set(scripts) == {"mamamia-train", "mamamia-infer", "mamamia-eval"}
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
        assert module in _cfg()["options"]["py_modules"], name


def test_every_package_is_installed():
    include = _cfg()["options.packages.find"]["include"]
    for pkg in (p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name not in ("tests", "bench")):
        assert f"{pkg}*" in include, pkg
