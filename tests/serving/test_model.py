"""Loading a champion: the self-check refuses what cannot serve; the watcher swaps safely."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.registry import point_champion_at
from serving.model import ChampionWatcher, LoadedModel, ModelLoadError, load


@pytest.fixture
def champion(served_state: Path) -> Path:
    return (served_state / "registry/champion").resolve()


def broken_copy(src: Path, dest: Path, how: str) -> Path:
    shutil.copytree(src, dest)
    if how == "truncated graph":
        data = (dest / "model.onnx").read_bytes()
        (dest / "model.onnx").write_bytes(data[: len(data) // 2])
    elif how == "missing graph":
        (dest / "model.onnx").unlink()
    elif how == "schema with another feature count":
        schema = json.loads((dest / "schema.json").read_text())
        schema["features"] = schema["features"][:-1]
        (dest / "schema.json").write_text(json.dumps(schema))
    elif how == "schema with other classes":
        schema = json.loads((dest / "schema.json").read_text())
        schema["target"]["classes"] = schema["target"]["classes"][:3]
        (dest / "schema.json").write_text(json.dumps(schema))
    elif how == "not json":
        (dest / "schema.json").write_text("{")
    return dest


def test_a_champion_loads_and_answers(champion: Path) -> None:
    model = load(champion)
    assert model.version == champion.name == "1"
    assert model.schema.n_classes == 10 and "# Model card" in model.card
    assert model.export["parity"]["passed"]


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated graph", "model.onnx"),
        ("missing graph", "model.onnx"),
        ("schema with another feature count", "the graph takes 64 features, schema.json has 63"),
        ("schema with other classes", "expected (3, 3) finite values"),
        ("not json", "JSONDecodeError"),
    ],
)
def test_a_broken_directory_is_refused(
    champion: Path, tmp_path: Path, how: str, message: str
) -> None:
    bad = broken_copy(champion, tmp_path / "bad", how)
    with pytest.raises(ModelLoadError) as info:
        load(bad)
    assert message in str(info.value) and str(bad) in str(info.value)


def test_the_watcher_swaps_to_a_good_champion_and_refuses_a_broken_one(
    champion: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    (registry / "versions").mkdir(parents=True)
    v1 = Path(shutil.copytree(champion, registry / "versions/1"))
    point_champion_at(registry, v1)
    swaps = []

    def prepare(model: LoadedModel) -> None:
        # Readers must not see the new model before its per-model state exists.
        assert watcher.current is None or watcher.current.version != model.version
        swaps.append(model.version)

    watcher = ChampionWatcher(registry, 0.05, prepare=prepare)
    assert watcher.check() and watcher.current.version == "1"
    assert not watcher.check()  # unchanged link: nothing to do

    point_champion_at(registry, broken_copy(champion, registry / "versions/2", "truncated graph"))
    assert not watcher.check()
    assert watcher.current.version == "1"  # the old model keeps serving
    assert str((registry / "versions/2").resolve()) in watcher.refused

    v3 = Path(shutil.copytree(champion, registry / "versions/3"))
    point_champion_at(registry, v3)
    watcher.start()  # the thread notices by itself
    try:
        for _ in range(100):
            if watcher.current.version == "3":
                break
            os.sched_yield()
            watcher._stop.wait(0.05)
    finally:
        watcher.stop()
    assert watcher.current.version == "3" and swaps == ["1", "3"]
