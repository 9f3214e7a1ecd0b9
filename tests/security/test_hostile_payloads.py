"""Code disguised as data: pickle/joblib payloads in every file mlbox is handed and every HTTP content type, ONNX
models whose tensors point at other files, YAML tags that construct Python objects, in every YAML the box reads.

A pickle payload here creates a marker file when unpickled (`open(marker, "w")`); a YAML payload
would do the same through `!!python/object/apply`. The rule under test: a clean refusal (or plain
data), the marker never appears, nothing is written next to the box, and the box works afterwards.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

from mlbox.errors import ValidationError
from mlbox.flavors.onnx import check_single_file, session

from ..conftest import OS_USER
from ..serve.conftest import AsgiClient, Template, copy_box, open_box, serve_template
from ._hostile import assert_envelope, assert_refused, tree

__all__ = ["serve_template"]


class Payload:
    """Unpickling this opens (so creates) `marker`: any unpickling at all leaves the proof behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def home(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_box(serve_template, tmp_path_factory.mktemp("payloads") / "box")


@pytest.fixture
def marker(home: Path) -> Iterator[Path]:
    path = home.parent / "PWNED"
    path.unlink(missing_ok=True)
    yield path
    assert not path.exists(), "a payload was unpickled or constructed"


def pickled(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def parquet_with_pickled_extension(path: Path, marker: Path) -> Path:
    """A Parquet file whose Arrow schema declares pyarrow's old pickle-backed extension type (CVE-2023-47248)."""
    meta = {b"ARROW:extension:name": b"arrow.py_extension_type", b"ARROW:extension:metadata": pickle.dumps(Payload(marker))}
    schema = pa.schema([pa.field("customer_id", pa.int64()), pa.field("blob", pa.binary(), metadata=meta)])
    pq.write_table(pa.table({"customer_id": [1, 2], "blob": [b"a", b"b"]}, schema=schema), path)
    return path


# files handed to mlbox -------------------------------------------------------------------------

FILE_COMMANDS = [
    ("features ingest", lambda f: ["features", "ingest", "customer_profile", str(f)]),
    ("features push", lambda f: ["features", "push", "customer_profile", str(f)]),
    ("features training-set", lambda f: ["features", "training-set", str(f), "--features", "customer_profile:age", "--out", "ts.parquet"]),
    ("labels ingest", lambda f: ["labels", "ingest", "bad", str(f)]),
    ("predict --input", lambda f: ["predict", "churn:1", "--input", str(f), "--out", "scored.parquet"]),
    ("features apply", lambda f: ["features", "apply", "--file", str(f)]),
    ("monitor apply", lambda f: ["monitor", "apply", str(f)]),
    ("train --spec", lambda f: ["train", str(f)]),
]


NOT_UTF8: dict[str, str] = {}  # a defect found here is an xfail(strict=True) entry until it is fixed
FILE_CASES = [
    pytest.param(name, args, id=name, marks=[pytest.mark.xfail(strict=True, reason=NOT_UTF8[name])] if name in NOT_UTF8 else [])
    for name, args in FILE_COMMANDS
]


@pytest.mark.parametrize("name,args", FILE_CASES)
@pytest.mark.parametrize("suffix", [".pkl", ".joblib", ".parquet", ".csv", ".yaml"])
def test_pickle_in_any_file_is_never_unpickled(cli_run, home: Path, marker: Path, name: str, args, suffix: str) -> None:  # type: ignore[no-untyped-def]
    """Pickle bytes under every name a command accepts: refused (not Parquet, not UTF-8, not YAML), never loaded."""
    path = pickled(home.parent / f"payload{suffix}", marker)
    outside = tree(home.parent, skip=home)
    result = cli_run("--home", str(home), *args(path))
    assert_refused(result)
    assert tree(home.parent, skip=home) == outside


@pytest.mark.parametrize("name,args", FILE_COMMANDS[:5], ids=[c[0] for c in FILE_COMMANDS[:5]])
def test_parquet_with_a_pickled_extension_type_stays_data(cli_run, home: Path, marker: Path, name: str, args) -> None:  # type: ignore[no-untyped-def]
    path = parquet_with_pickled_extension(home.parent / "ext.parquet", marker)
    result = cli_run("--home", str(home), *args(path))
    assert_refused(result)  # the columns do not fit any view, labels file or model


def test_training_data_with_a_pickled_extension_type_stays_data(home: Path, marker: Path) -> None:
    """pandas reads training files through pyarrow: the extension type's pickle must not be loaded."""
    from mlbox.train.data import read_file

    frame = read_file(parquet_with_pickled_extension(home.parent / "train_ext.parquet", marker))
    assert list(frame.columns) == ["customer_id", "blob"]


# HTTP: every content type ----------------------------------------------------------------------

CONTENT_TYPES = [
    "application/python-pickle", "application/octet-stream", "application/x-python-serialize",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", "application/json", None,
]  # fmt: skip


@pytest.fixture(scope="module")
def api(home: Path) -> Iterator[AsgiClient]:
    from mlbox.api.app import build_app
    from mlbox.api.context import ServeContext
    from mlbox.config import load_settings

    with open_box(home) as box:
        if not any(d.name == "bad" for d in box.deployments.all()):
            box.deployments.create("bad", "churn:1", OS_USER)
    ctx = ServeContext(load_settings(home, environ={}))
    ctx.start()
    try:
        yield AsgiClient(build_app(ctx))
    finally:
        ctx.close()


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize("route", ["/v1/deployments/bad/predict", "/v1/features/push", "/v1/features/online", "/v1/deployments/bad/canary"])
def test_pickle_bodies_are_refused_under_every_content_type(
    api: AsgiClient, serve_template: Template, marker: Path, route: str, content_type: str | None
) -> None:
    headers = {"Authorization": f"Bearer {serve_template.tokens['admin']}"}
    if content_type:
        headers["Content-Type"] = content_type
    response = api.post(route, content=pickle.dumps(Payload(marker)), headers=headers)
    assert_envelope(response, (400, 415, 422))
    assert api.get("/readyz").status_code == 200


# ONNX with external data -----------------------------------------------------------------------


def _tensor(name: str, location: str | None) -> TensorProto:
    t = helper.make_tensor(name, TensorProto.FLOAT, [1], [1.0])
    if location is not None:
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)
        t.external_data.add(key="length", value="4")
    return t


def onnx_model(path: Path, location: str, where: str) -> Path:
    """y = x + w, with `w` stored at `location` — in the main graph, in an attribute, or inside an If branch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    if where == "initializer":
        graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [_tensor("w", location)])
    elif where == "attribute":
        nodes = [helper.make_node("Constant", [], ["w"], value=_tensor("wc", location)), helper.make_node("Add", ["x", "w"], ["y"])]
        graph = helper.make_graph(nodes, "g", [x], [y])
    else:
        branch_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])
        then = helper.make_graph([helper.make_node("Identity", ["w"], ["b"])], "then", [], [branch_out], [_tensor("w", location)])
        other = helper.make_graph([helper.make_node("Identity", ["z"], ["b"])], "else", [], [branch_out], [_tensor("z", None)])
        cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
        nodes = [helper.make_node("If", ["c"], ["w2"], then_branch=then, else_branch=other), helper.make_node("Add", ["x", "w2"], ["y"])]
        graph = helper.make_graph(nodes, "g", [x], [y], [cond])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("where", ["initializer", "attribute", "subgraph"])
@pytest.mark.parametrize("location", ["../../../../etc/passwd", "/etc/passwd", "weights.bin", "..\\..\\x"])
def test_onnx_with_external_data_is_refused(tmp_path: Path, where: str, location: str) -> None:
    (tmp_path / "weights.bin").write_bytes(np.float32([41.0]).tobytes())
    path = onnx_model(tmp_path / "model.onnx", location, where)
    with pytest.raises(ValidationError, match="ONNX models with external data are refused"):
        check_single_file(path)
    with pytest.raises(ValidationError, match="ONNX models with external data are refused"):
        session(path, threads=1)


def test_a_single_file_onnx_model_still_loads(tmp_path: Path) -> None:
    from mlbox.flavors.onnx import run

    path = onnx_model(tmp_path / "ok.onnx", None, "initializer")  # type: ignore[arg-type]
    assert run(session(path, threads=1), np.float32([[2.0], [5.0]])).tolist() == [3.0, 6.0]


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, pickle.dumps({"a": 1}), b"PK\x03\x04zip"])
def test_a_file_that_is_not_onnx_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    with pytest.raises(ValidationError, match="junk.onnx: not"):
        session(path, threads=1)


# YAML that constructs Python objects -----------------------------------------------------------

TAGS = [
    "!!python/object/apply:builtins.open [{marker}, w]",
    "!!python/object/new:builtins.open [{marker}, w]",
    "!!python/name:os.system",
    "!!python/module:os",
]


def _yaml(kind: str, tag: str, marker: Path) -> str:
    payload = tag.format(marker=f"'{marker}'")
    if kind == "features":
        return f"entities:\n  customer: {payload}\n"
    if kind == "monitoring":
        return f"deployments:\n  bad: {payload}\n"
    return f"experiment: {payload}\nmodel: m\ntask: classification\ntarget: y\n"


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("kind,command", [("features", ["features", "plan", "--file"]), ("features", ["features", "apply", "--file"]),
                                          ("monitoring", ["monitor", "apply"]), ("train", ["train"])])  # fmt: skip
def test_yaml_python_tags_are_refused(cli_run, home: Path, marker: Path, kind: str, command: list[str], tag: str) -> None:  # type: ignore[no-untyped-def]
    path = home.parent / f"{kind}.yaml"
    path.write_text(_yaml(kind, tag, marker))
    outside = tree(home.parent, skip=home)
    assert_refused(cli_run("--home", str(home), *command, str(path)))
    assert tree(home.parent, skip=home) == outside


def test_yaml_in_the_box_default_files_is_refused_too(cli_run, home: Path, marker: Path) -> None:  # type: ignore[no-untyped-def]
    """The box's own features.yaml (read by `features plan` with no argument) is held to the same rule."""
    original = (home / "features.yaml").read_text()
    try:
        (home / "features.yaml").write_text(_yaml("features", TAGS[0], marker))
        assert_refused(cli_run("--home", str(home), "features", "plan"))
    finally:
        (home / "features.yaml").write_text(original)
    assert cli_run("--home", str(home), "features", "plan").exit_code == 0


def test_a_yaml_alias_bomb_does_not_hang(cli_run, home: Path) -> None:  # type: ignore[no-untyped-def]
    """Billion laughs: nine levels of nine aliases (387 million strings if expanded)."""
    import time

    lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = home.parent / "laughs.yaml"
    path.write_text("entities:\n  " + "\n  ".join(lines) + "\n")
    started = time.perf_counter()
    assert_refused(cli_run("--home", str(home), "features", "plan", "--file", str(path)))
    assert time.perf_counter() - started < 10


def test_the_box_still_works(cli_run, home: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("--home", str(home), "doctor")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert pd.read_parquet(home.parent / "ext.parquet").shape == (2, 2)
