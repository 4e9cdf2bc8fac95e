"""Every option of every stage table (options.SCHEMAS, the one schema the stage declarations are built on): an
unknown key, and a value outside the allowed ones or the range, each give one line naming the file and the key
before any stage runs. (A wrong type for every option: tests/test_user_errors.py.)"""

import tomllib
from pathlib import Path

import pytest

from conftest import dumps_toml
from toolchain.errors import SpecError
from toolchain.options import SCHEMAS, Range

REPO = Path(__file__).resolve().parents[1]


def _place(table, name, value):
    """(target file document, the key an error must name) with `name` = value set in `table`."""
    base = tomllib.loads((REPO / "targets" / "x86_64.toml").read_text())
    if table == "convert:litert-torch":
        base["convert"] = {"converter": "litert-torch"}
        table = "convert"
    if table == "target":
        base[name] = value
        return base, name
    if table == "runtime_options":
        base["runtime_options"] = [{"name": "x", name: value}] if name != "name" else [{"name": value}]
        return base, f"runtime_options[0].{name}"
    base.setdefault(table, {})[name] = value
    return base, f"{table}.{name}"


def _one_line_error(doc, key, tmp_path, needle):
    from toolchain.targets import load_target

    d = tmp_path / "targets"
    d.mkdir()
    path = d / "x86_64.toml"
    path.write_text(dumps_toml(doc))
    with pytest.raises(SpecError) as ei:
        load_target("x86_64", d)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: {key}: ") and needle in msg, msg
    assert len(msg.splitlines()) == 1, msg


TABLES = list(SCHEMAS)


@pytest.mark.parametrize("table", TABLES)
def test_unknown_key_in_every_table(table, tmp_path):
    doc, key = _place(table, "zz_not_an_option", 1)
    _one_line_error(doc, key, tmp_path, "unknown key")


def _out_of_range():
    for table, options in SCHEMAS.items():
        for name, option in options.items():
            allowed = option.allowed
            if isinstance(allowed, Range):
                yield table, name, (allowed.lo if allowed.lo_open else allowed.lo - 1), "must be in"
                yield table, name, allowed.hi + 1, "must be in"
            elif allowed is not None:
                bad = "zz-not-allowed"
                yield table, name, [bad] if option.kind == "strs" else bad, "must be one of"


CASES = list(_out_of_range())


@pytest.mark.parametrize("table,name,value,needle", CASES, ids=[f"{t}.{n}={v}" for t, n, v, _ in CASES])
def test_value_outside_the_allowed_ones(table, name, value, needle, tmp_path):
    option = SCHEMAS[table][name]
    if option.kind == "number":
        value = float(value)
    doc, key = _place(table, name, value)
    _one_line_error(doc, key, tmp_path, needle)


def test_readme_option_reference_is_generated_from_the_schemas():
    """The README's option reference is the schemas' own rendering: a new or changed option without a regenerated
    README (python -m toolchain.options_doc README.md) fails here, and every option has its one-line description."""
    from toolchain import options_doc

    described = {f"{t}.{n}" for t, opts in SCHEMAS.items() for n in opts}
    assert set(options_doc.DESCRIPTIONS) == described
    assert set(options_doc.TABLES) == set(SCHEMAS)
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert options_doc.replace_block(text, options_doc.markdown()) == text, \
        "README option reference is stale: run python -m toolchain.options_doc README.md"
