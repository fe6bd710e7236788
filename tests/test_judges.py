"""The judge panel: its judges read real digits, the forest's export is exact, the realism and
saturation measures, the bundled files, and sdo train-testbed writing the panel."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from shortcut_diffusion.models.testbed import data
from shortcut_diffusion.models.testbed.judges import ForestJudge, KnnJudge, forest_features, held_out_accuracy
from shortcut_diffusion.models.testbed.model import BUNDLED, load_digits_model
from shortcut_diffusion.models.testbed.panel import panel_line, panel_report, realism, saturation
from shortcut_diffusion.tasks.panel import reward_target


@pytest.fixture(scope="module")
def bundled(request):
    def refuse(*args, **kwargs):
        raise OSError("the bundled testbed must load without a network")

    patch = pytest.MonkeyPatch()
    patch.setattr(socket.socket, "connect", refuse)
    try:  # offline: every file it needs ships with the package (and scikit-learn's digits)
        model = load_digits_model()
        model.panel.predict(data.load("held_out").images[:4])
    finally:
        patch.undo()
    return model


def test_the_bundled_panel_is_three_families_each_accurate_on_held_out_digits(bundled):
    assert list(bundled.panel.judges) == ["mlp", "knn", "forest"]
    assert bundled.panel.judges["mlp"].network is bundled.judge
    for name, judge in bundled.panel.judges.items():
        accuracy = held_out_accuracy(judge)
        assert accuracy > 0.85, name
        assert accuracy == pytest.approx(bundled.info["panel"][name]["held_out_accuracy"], abs=1e-6), name


def test_bundled_files_are_json_and_safetensors_only():
    files = [p for p in BUNDLED.rglob("*") if p.is_file()]
    assert any(p.name == "panel.safetensors" for p in files)
    assert {p.suffix for p in files} <= {".json", ".safetensors"}
    for path in files:  # no pickle stream (protocol 2+ starts with 0x80) hides under another name
        assert not path.read_bytes()[:1] == b"\x80", path


def test_the_forest_export_votes_as_the_sklearn_trees_do():
    from sklearn.ensemble import RandomForestClassifier

    train, held = data.load("train"), data.load("held_out")
    forest = RandomForestClassifier(n_estimators=7, random_state=0, n_jobs=1)
    forest.fit(forest_features(train.images), train.labels.numpy())
    images = torch.cat([held.images, torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1])
    x = forest_features(images)
    votes = np.stack([np.eye(10, dtype=int)[tree.predict(x).astype(int)] for tree in forest.estimators_]).sum(0)
    np.testing.assert_array_equal(ForestJudge.from_sklearn(forest).predict(images), votes.argmax(1))


def test_knn_majority_and_a_three_way_tie_toward_the_nearest(monkeypatch):
    from shortcut_diffusion.models.testbed import judges

    # Reference points on one pixel: classes 2, 5, 8 at 1, 2, 3 and two 4s at 10, 11.
    values = torch.tensor([1.0, 2.0, 3.0, 10.0, 11.0])
    reference = data.Digits(torch.zeros(5, 1, 8, 8).index_put_((torch.arange(5), torch.zeros(5, dtype=torch.long),
                                                                torch.zeros(5, dtype=torch.long),
                                                                torch.zeros(5, dtype=torch.long)), values),
                            torch.tensor([2, 5, 8, 4, 4]))
    monkeypatch.setattr(judges.data, "load", lambda split: reference)
    queries = torch.zeros(4, 1, 8, 8)
    queries[:, 0, 0, 0] = torch.tensor([0.0, 2.4, 10.5, 8.0])
    # 0.0: 2, 5, 8 tie -> the nearest (2); 2.4: 5, 8, 2 tie -> 5; 10.5: two 4s outvote the 8; 8.0: 4s win too.
    assert KnnJudge(k=3).predict(queries).tolist() == [2, 5, 4, 4]


def test_the_panel_agrees_on_real_digits(bundled):
    held = data.load("held_out")
    report = panel_report(bundled, held.images, held.labels.tolist())
    assert report["judges"] == ["mlp", "knn", "forest"] and report["count"] == len(held.labels)
    assert report["agreement"] > 0.93 and report["read_by_all"] / report["count"] > 0.93
    assert report["read_by_all"] <= min(report["read_by_judge"].values())
    agreed = [k for k in report["consensus"] if k is not None]
    assert len(agreed) == round(report["agreement"] * report["count"])


def test_realism_is_about_one_for_real_digits_and_far_above_for_noise():
    train, held = data.load("train"), data.load("held_out")
    assert float(realism(train.images[:20], train.labels[:20].tolist()).max()) == 0.0  # they are the reference
    assert 0.8 < float(realism(held.images, held.labels.tolist()).median()) < 1.3
    noise = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert float(realism(noise, [7] * 64).median()) > 2.5
    sevens = held.images[held.labels == 7]  # a real 7 is far from the 1s
    assert float(realism(sevens, [1] * len(sevens)).median()) > 1.5


def test_saturation_counts_the_pixels_at_the_rails():
    image = torch.zeros(2, 1, 8, 8)
    image[0].view(-1)[:16] = 1.0
    image[0].view(-1)[16:32] = -0.96
    image[0].view(-1)[32:48] = 0.95  # on the threshold: not at the rail
    image[1] = -1.0
    assert saturation(image).tolist() == [0.5, 1.0]


def test_the_target_is_the_rewarded_class_else_the_condition():
    assert reward_target("digit-class:7", [1, 1]) == [7, 7]
    assert reward_target("adversarial:3,weight=2", [1, 2]) == [3, 3]
    assert reward_target("digit-class:7=1,ink=0.1", [1, 2]) == [7, 7]
    assert reward_target("digit-match", [1, 2]) == [1, 2]
    assert reward_target("ink", [4]) == [4]


def test_panel_line_and_a_model_without_a_panel(bundled):
    held = data.load("held_out")
    sevens = held.images[held.labels == 7][:8]
    report = panel_report(bundled, sevens, 7)
    assert report["target"] == [7] * 8 and report["digits_fd"] is not None
    line = panel_line(report)
    assert line.startswith("panel (3 judges, never rewards): ") and "read as 7 by all; realism" in line
    from shortcut_diffusion import load_model

    assert panel_report(load_model("toy"), sevens, 7) is None


def test_train_testbed_writes_the_panel(tiny_testbed_dir):
    info = json.loads((tiny_testbed_dir / "testbed.json").read_text())
    assert set(info["panel"]) == {"mlp", "knn", "forest"} and (tiny_testbed_dir / "panel.safetensors").is_file()
    assert info["panel"]["forest"]["seed"] == info["training"]["seed"] + 2
    model = load_digits_model(tiny_testbed_dir)
    assert list(model.panel.judges) == ["mlp", "knn", "forest"]
    for name in ("knn", "forest"):  # the diffusion model's tiny settings do not touch these
        assert held_out_accuracy(model.panel.judges[name]) > 0.85
