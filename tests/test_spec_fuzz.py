"""Property tests of the spec loader: whatever a build spec holds, loading it gives a BuildSpec or one SpecError
that starts with the spec's path and names the dotted key at fault; never another exception (which the command
line would print as a traceback).

Crashes found here are pinned by explicit regression tests at the end."""

import copy
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from toolchain.errors import SpecError
from toolchain.spec import BuildSpec, load_spec, parse_spec

from conftest import dumps_toml

SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Crashes once found here, now fixed, each with its regression test below; none is tolerated any more.
KNOWN_CRASHES = []


def _esc(text: str) -> str:
    """How an error message shows line breaks (it stays one line)."""
    return "".join(repr(c)[1:-1] if len(f"a{c}a".splitlines()) > 1 else c for c in text)


def _known(e: BaseException) -> bool:
    for kind, fragment in KNOWN_CRASHES:
        if isinstance(e, kind) and fragment in str(e):
            event(f"known crash: {kind.__name__}: {fragment}")
            return True
    return False


@pytest.fixture(scope="module")
def base(models, python_path, tmp_path_factory):
    """A valid spec as the dict tomllib would give, with every target and a prune table, and its path."""
    m = models["tiny_cnn"]
    d = tmp_path_factory.mktemp("fuzz spec")
    raw = {
        "model": {"name": "tiny_cnn", "version": "1.0.0", "factory": "tc_tiny_models.models:tiny_cnn",
                  "factory_args": {}, "weights": str(m.weights), "python_path": [str(python_path)]},
        "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32", "dynamic_axes": {"0": "batch"}}],
        "outputs": [{"name": "logits"}],
        "data": {"calibration": str(m.calibration), "evaluation": str(m.evaluation), "labels_key": "labels"},
        "metric": {"name": "top1"},
        "trace": {"opset": 17, "atol": 1e-4, "rtol": 1e-3},
        "prune": {"method": "channel", "ratio": 0.25, "layer_ratios": {"features.0": 0.5}, "ignore": ["classifier"],
                  "importance": "magnitude", "epochs": 0, "lr": 0.001, "seed": 0, "temperature": 4.0},
        "targets": {"x86_64": {"max_metric_drop": 1.0, "quantize": {"calibrate_method": "minmax"}},
                    "arm64": {"max_metric_drop": 2.0}, "cuda": {"max_metric_drop": 0.5, "latency": {"runs": 10}}},
    }
    path = (d / "build.toml").resolve()
    assert isinstance(parse_spec(path, copy.deepcopy(raw)), BuildSpec)  # the base itself is valid
    return path, raw


# ---- values -----------------------------------------------------------------------------------------------------------
INT64 = st.integers(min_value=-2**63, max_value=2**63 - 1)  # what TOML can hold
scalars = st.one_of(st.none(), st.booleans(), INT64, st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 101.0, -0.0, 1e308, ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)
shapes = st.lists(st.one_of(st.integers(-3, 9), INT64, st.sampled_from([0, -1, 2**63 - 1]), st.booleans(),
                            st.floats(allow_nan=True)), max_size=6)
budgets = st.one_of(st.floats(allow_nan=True, allow_infinity=True), INT64,
                    st.sampled_from([-1e-9, 100.0000001, 100, 0, -0.0, 1e400]))
not_strings = st.one_of(st.none(), st.booleans(), INT64, st.floats(allow_nan=True), st.lists(scalars, max_size=3),
                        st.dictionaries(st.text(max_size=5), scalars, max_size=3))

PATH_KEYS = [("model", "weights"), ("data", "calibration"), ("data", "evaluation"), ("model", "python_path"),
             ("model", "factory"), ("prune", "train")]


def _paths(node, prefix=()):
    """Every location in the document: dict keys and list indices, depth first."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _parent(doc, path):
    node = doc
    for k in path[:-1]:
        node = node[k]
    return node


def _set(doc, path, value):
    """Set doc[path] = value, creating tables on the way when they are missing or not tables."""
    node = doc
    for k in path[:-1]:
        if isinstance(node, dict):
            if not isinstance(node.get(k), (dict, list)):
                node[k] = {}
            node = node[k]
        elif isinstance(node, list) and isinstance(k, int) and k < len(node):
            node = node[k]
        else:
            return
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
        node[path[-1]] = value


def _mutate(doc, data) -> tuple:
    """One random mutation; returns the location it touched (the error, if any, must be there or below)."""
    kind = data.draw(st.sampled_from(["delete", "replace", "add unknown key", "shape", "budget", "path", "nested",
                                      "dynamic axes", "list item"]))
    if kind in ("delete", "replace"):
        paths = _paths(doc)
        if not paths:
            return ()
        path = data.draw(st.sampled_from(paths))
        if kind == "delete":
            del _parent(doc, path)[path[-1]]
        else:
            _parent(doc, path)[path[-1]] = data.draw(values)
        return path
    if kind == "add unknown key":
        tables = [()] + [p for p in _paths(doc) if isinstance(_parent(doc, p)[p[-1]], dict)]
        where = data.draw(st.sampled_from(tables))
        table = _parent(doc, where + ("",)) if where else doc
        key = data.draw(st.text(min_size=1, max_size=10))
        table[key] = data.draw(values)
        return where + (key,) if where else (key,)
    if kind == "shape":
        path = ("inputs", 0, "shape")
        _set(doc, path, data.draw(shapes))
        return path
    if kind == "budget":
        path = ("targets", data.draw(st.sampled_from(["x86_64", "arm64", "cuda"])), "max_metric_drop")
        _set(doc, path, data.draw(budgets))
        return path
    if kind == "path":
        path = data.draw(st.sampled_from(PATH_KEYS))
        value = data.draw(not_strings)
        if path == ("model", "python_path") and data.draw(st.booleans()):
            value = [data.draw(not_strings)]
        _set(doc, path, value)
        return path
    if kind == "nested":
        path = data.draw(st.sampled_from([("trace", "opset"), ("trace", "atol"), ("prune", "ratio"),
                                          ("prune", "layer_ratios", "features.0"), ("prune", "epochs"),
                                          ("prune", "steps"), ("prune", "seed"), ("metric", "name"),
                                          ("model", "factory_args"), ("targets", "x86_64", "quantize"),
                                          ("inputs", 0, "dtype"), ("inputs", 0, "name"), ("outputs", 0, "name"),
                                          ("model", "name"), ("model", "version"), ("data", "labels_key")]))
        _set(doc, path, data.draw(values))
        return path
    if kind == "dynamic axes":
        path = ("inputs", 0, "dynamic_axes")
        _set(doc, path, data.draw(st.dictionaries(st.one_of(st.text(max_size=3), st.sampled_from(["0", "3", "4",
                                                                                                  "-1", "00", "1"])),
                                                  st.one_of(st.text(max_size=5), scalars), max_size=3)))
        return path
    path = (data.draw(st.sampled_from(["inputs", "outputs"])),)
    items = doc.get(path[0])
    if isinstance(items, list):
        items.append(data.draw(st.one_of(values, st.just({"name": "input", "shape": [1, 2]}))))
    return path


def _names(key: str, touched: tuple) -> bool:
    """The error's dotted key is at the touched location or inside it (same top-level section at least)."""
    if not touched:
        return True
    root = str(touched[0])
    return key == root or key.startswith(root + ".") or key.startswith(root + "[")


@SETTINGS
@given(data=st.data())
def test_mutated_spec_loads_or_names_the_key(base, data):
    path, raw = base
    doc = copy.deepcopy(raw)
    touched = [_mutate(doc, data) for _ in range(data.draw(st.integers(1, 3)))]
    try:
        spec = parse_spec(path, doc)
    except SpecError as e:
        msg = str(e)
        assert e.key, msg  # names a key, not just the file
        assert msg.startswith(f"{_esc(str(path))}: {_esc(e.key)}: "), msg
        assert len(msg.splitlines()) == 1, msg  # one line, even when the spec's keys or strings hold line breaks
        assert any(_names(e.key, t) for t in touched), (e.key, touched)
        event(f"SpecError at {re.split(r'[.[]', e.key)[0]}")
        return
    except Exception as e:  # noqa: BLE001
        if _known(e):
            return
        raise
    assert isinstance(spec, BuildSpec)
    event("valid")
    # What passed the checks is what the rest of the toolchain relies on.
    assert all(isinstance(d, int) and d > 0 for t in spec.inputs for d in t.shape)
    for t in spec.targets.values():
        assert isinstance(t.max_metric_drop, float) and 0.0 <= t.max_metric_drop <= 100.0
    assert 13 <= spec.opset <= 21 and spec.weights.is_file()


# ---- random TOML text ------------------------------------------------------------------------------------------------
def _edits(text: str):
    lines = text.splitlines()
    return st.one_of(
        st.text(max_size=200),  # anything at all
        st.lists(st.sampled_from(lines), max_size=len(lines) + 3).map("\n".join),  # lines dropped, repeated, shuffled
        st.tuples(st.integers(0, len(text)), st.integers(0, 30), st.text(max_size=20)).map(
            lambda t: text[:t[0]] + t[2] + text[t[0] + t[1]:]),  # a splice: some characters replaced
        st.integers(0, len(text)).map(lambda n: text[:n]),  # truncated
    )


@pytest.fixture(scope="module")
def base_text(base):
    path, raw = base
    return dumps_toml(raw)


@SETTINGS
@given(data=st.data())
def test_random_toml_text_loads_or_is_a_spec_error(base_text, tmp_path_factory, data):
    text = data.draw(_edits(base_text))
    d = tmp_path_factory.getbasetemp() / "fuzz text"
    d.mkdir(exist_ok=True)
    f = d / "build.toml"
    f.write_text(text, encoding="utf-8")
    try:
        spec = load_spec(f)
    except SpecError as e:
        msg = str(e)
        assert msg.startswith(f"{f.resolve()}: ") or msg.startswith(f"{f}: "), msg
        assert e.path in (str(f), str(f.resolve()))
        event("invalid TOML" if "invalid TOML" in msg else "SpecError with a key" if e.key else "SpecError")
        return
    except Exception as e:  # noqa: BLE001
        if _known(e):
            return
        raise
    assert isinstance(spec, BuildSpec)
    event("valid")


def test_non_utf8_bytes_are_a_spec_error(tmp_path):
    f = tmp_path / "build.toml"
    f.write_bytes(b'[model]\nname = "\xff\xfe"\n')
    with pytest.raises(SpecError, match="is not UTF-8 text"):
        load_spec(f)


# ---- what the properties found ----------------------------------------------------------------------------------
def _cli_load(f: Path):
    """The command line on that spec: one `error:` line and exit 2, or the crash."""
    from click.testing import CliRunner

    from toolchain.cli import main

    return CliRunner().invoke(main, ["build", str(f), "-o", str(f.parent / "out")])


def _assert_spec_error_line(f: Path, key: str):
    r = _cli_load(f)
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, r.output)
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith(f"error: {f.resolve()}: {key}"), line


def test_key_with_a_newline_stays_one_error_line(base, tmp_path):
    path, raw = base
    doc = copy.deepcopy(raw)
    doc["targets"] = {"x86_64\nall targets passed": {}}  # a quoted TOML key with an escaped newline
    f = tmp_path / "build.toml"
    f.write_text(dumps_toml(doc), encoding="utf-8")
    r = _cli_load(f)
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines


@pytest.mark.parametrize("key", ["model.weights", "model.python_path", "data.calibration"])
def test_nul_byte_in_a_path_is_a_spec_error(key, base, tmp_path):
    path, raw = base
    doc = copy.deepcopy(raw)
    section, name = key.split(".")
    doc[section][name] = ["bad\u0000path"] if name == "python_path" else "bad\u0000path"
    f = tmp_path / "build.toml"
    f.write_text(dumps_toml(doc))  # json.dumps writes NUL as \u0000, a valid TOML escape
    assert "\\u0000" in f.read_text()
    _assert_spec_error_line(f, key)


def test_non_ascii_digit_dynamic_axis_is_a_spec_error(base, tmp_path):
    path, raw = base
    doc = copy.deepcopy(raw)
    doc["inputs"][0]["dynamic_axes"] = {"²": "batch"}
    f = tmp_path / "build.toml"
    f.write_text(dumps_toml(doc), encoding="utf-8")
    _assert_spec_error_line(f, "inputs[0].dynamic_axes")


@pytest.mark.parametrize("key", ["model.weights", "data.evaluation"])
def test_overlong_file_name_is_a_spec_error(key, base, tmp_path):
    path, raw = base
    doc = copy.deepcopy(raw)
    section, name = key.split(".")
    doc[section][name] = "w" * 300 + ".npz"
    f = tmp_path / "build.toml"
    f.write_text(dumps_toml(doc))
    _assert_spec_error_line(f, key)


def test_deeply_nested_toml_is_a_spec_error(tmp_path):
    f = tmp_path / "build.toml"
    f.write_text("x = " + "[" * 1000 + "]" * 1000 + "\n")
    r = _cli_load(f)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), repr(r.exception)
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith(f"error: {f.resolve()}: ") or line.startswith(f"error: {f}: "), line


def test_budget_beyond_float_range_from_a_dict(base):
    path, raw = base
    doc = copy.deepcopy(raw)
    doc["targets"]["x86_64"]["max_metric_drop"] = 10**400
    with pytest.raises(SpecError) as ei:
        parse_spec(path, doc)
    assert ei.value.key == "targets.x86_64.max_metric_drop"
