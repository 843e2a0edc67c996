"""Label maps (stamcli.labelmap): reading YAML/CSV maps, checking them against a model's labels,
summing probabilities into tags, and the packaged Kinetics-400 coarse map. No device involved."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import yaml

from conftest import SHARED, TINY_LABELS
from stamcli.errors import StamError
from stamcli.labelmap import LabelMap, closest_labels, packaged_label_maps

K400 = (SHARED / "data" / "kinetics400_labels.txt").read_text(encoding="utf-8").splitlines()
# TINY_LABELS: archery, baking, cycling, diving, "eating, with a fork"
YAML_MAP = "sport:\n  - archery\n  - cycling\n  - diving\nfood: [baking, 'eating, with a fork']\n"
CSV_MAP = 'label,tag\narchery,sport\ncycling,sport\ndiving,sport\nbaking,food\n"eating, with a fork",food\n'


def _assert_scores(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=1e-7, rtol=0)


def _write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_the_packaged_coarse_map_puts_every_kinetics_label_in_exactly_one_tag():
    assert "kinetics400-coarse" in packaged_label_maps()
    from importlib import resources

    raw = yaml.safe_load((resources.files("stamcli") / "data/label_maps/kinetics400-coarse.yaml").read_text("utf-8"))
    named = Counter(label for members in raw.values() for label in members)
    assert sorted(named) == sorted(K400) and set(named.values()) == {1}
    assert 20 <= len(raw) <= 40 and all(len(members) >= 2 for members in raw.values())
    mapping = LabelMap.load("kinetics400-coarse", K400)
    assert mapping.tags == list(raw) and mapping.unmapped == [] and mapping.rest is None
    assert mapping.members("music")[:2] == ["air drumming", "beatboxing"]
    probs = torch.softmax(torch.randn(3, 400, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert mapping.apply(probs).sum(dim=-1).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    # the stamcli copy of the labels is the ground truth's
    assert (resources.files("stamcli") / "data/kinetics400_labels.txt").read_text("utf-8").splitlines() == K400


def test_yaml_and_csv_maps_read_the_same_and_tag_scores_are_sums_of_probabilities(tmp_path):
    from_yaml = LabelMap.load(_write(tmp_path, "map.yaml", YAML_MAP), TINY_LABELS)
    from_csv = LabelMap.load(_write(tmp_path, "map.csv", CSV_MAP), TINY_LABELS)
    assert from_yaml.groups == from_csv.groups == {"sport": ("archery", "cycling", "diving"),
                                                   "food": ("baking", "eating, with a fork")}
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25], [0.5, 0.0, 0.0, 0.4, 0.1]])
    expected = [[0.1 + 0.3 + 0.15, 0.2 + 0.25], [0.5 + 0.0 + 0.4, 0.0 + 0.1]]
    for mapping in (from_yaml, from_csv):
        assert mapping.tags == ["sport", "food"]
        _assert_scores(mapping.apply(probs), expected)
        _assert_scores(mapping.apply(probs[0]), expected[0])  # one video


def test_unnamed_labels_are_left_out_or_go_to_the_rest_tag_and_tags_may_overlap(tmp_path):
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]])
    left_out = LabelMap.load(_write(tmp_path, "a.yaml", "sport: [archery, diving]\nall sport: [archery, cycling, "
                                                       "diving]\n"), TINY_LABELS)
    assert left_out.unmapped == ["baking", "eating, with a fork"]
    _assert_scores(left_out.apply(probs), [[0.25, 0.55]])
    with_rest = LabelMap.load(_write(tmp_path, "b.csv", "archery,sport\ndiving,sport\n*,other\nbaking,other\n"),
                              TINY_LABELS)
    assert with_rest.rest == "other" and with_rest.unmapped == []
    assert with_rest.members("other") == ["baking", "cycling", "eating, with a fork"]
    _assert_scores(with_rest.apply(probs), [[0.25, 0.75]])
    yaml_rest = LabelMap.load(_write(tmp_path, "c.yaml", "sport: [archery, diving]\nother: '*'\n"), TINY_LABELS)
    assert yaml_rest.members("other") == ["baking", "cycling", "eating, with a fork"]


def test_other_extensions_are_read_as_a_yaml_mapping_or_else_csv(tmp_path):
    assert LabelMap.read(_write(tmp_path, "map.txt", YAML_MAP)).tags == ["sport", "food"]
    assert LabelMap.read(_write(tmp_path, "map.tags", CSV_MAP)).tags == ["sport", "food"]


def test_a_label_the_model_does_not_have_is_named_with_its_closest_labels(tmp_path):
    path = _write(tmp_path, "map.yaml", "basketball: [dribling basketball, Dunking Basketball, zzz, dunking basketball, "
                                        "playing basketball, shooting basketball]\n")
    with pytest.raises(StamError) as err:
        LabelMap.load(path, K400)
    message = str(err.value)
    assert message.startswith(f"label map {path} names 3 label(s) the model does not have: ")
    assert "'dribling basketball' (closest: dribbling basketball" in message
    assert "'Dunking Basketball' (closest: dunking basketball" in message
    assert "'zzz' (no close label)" in message
    assert "\n" not in message
    with pytest.raises(StamError, match=r"names 3 label\(s\) the model does not have \(is the map for another "
                                        r"model's labels\?\): 'dribling basketball'"):
        LabelMap.load(_write(tmp_path, "all.yaml", "basketball: [dribling basketball, Dunking Basketball, zzz]\n"), K400)
    assert closest_labels("playing guitr", K400)[0] == "playing guitar"


@pytest.mark.parametrize("name, text, expected", [
    ("video.yaml", b"\x00\x00\x00\x18ftypisom\xff\xfe", "is not a text file"),
    ("map.csv", b"\x89PNG\r\n\x1a\n\x00\x00", "is not a text file"),
    ("map.yaml", "sport: [archery\nfood: baking\n", "is not valid YAML (line 2)"),
    ("map.yaml", "- archery\n- cycling\n", "is not a YAML mapping of tag: [labels]"),
    ("map.yaml", "sport: [archery]\nsport: [diving]\n", "tag 'sport' is given twice"),
    ("map.yaml", "sport: []\n", "tag 'sport' must have a list of labels"),
    ("map.yaml", "sport: {archery: 1}\n", "tag 'sport' must have a list of labels"),
    ("map.yaml", "", "is not a YAML mapping"),
    ("map.csv", "archery,sport,extra\n", "line 1: expected 'label,tag', got 3 field(s)"),
    ("map.csv", "just one field\n", "expected 'label,tag', got 1 field(s)"),
    ("map.csv", "# only a comment\n", "has no tags"),
    ("map.csv", "archery,sport\narchery,sport\n", "label 'archery' is listed twice under tag 'sport'"),
    ("map.csv", "*,other\n*,rest\n", "'*' (every other label) is given to two tags, 'other' and 'rest'"),
    ("map.csv", "archery,\n", "an empty tag name (for label 'archery')"),
    ("map.txt", "[not, a, mapping\n", "expected 'label,tag', got 3 field(s)"),
])
def test_bad_map_files_give_one_line_errors(tmp_path, name, text, expected):
    path = _write(tmp_path, name, text)
    with pytest.raises(StamError) as err:
        LabelMap.load(path, TINY_LABELS)
    assert expected in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_missing_map_or_a_folder_is_a_one_line_error_listing_the_packaged_maps(tmp_path):
    with pytest.raises(StamError, match=r"label map kinetics-fine not found: give a YAML or CSV file, or one of "
                                        r"the packaged maps \(kinetics400-coarse\)"):
        LabelMap.read("kinetics-fine")
    with pytest.raises(StamError, match="is a folder"):
        LabelMap.read(tmp_path)


def test_apply_needs_a_bound_map_with_the_models_number_of_classes(tmp_path):
    unbound = LabelMap.read(_write(tmp_path, "map.yaml", YAML_MAP))
    with pytest.raises(ValueError, match="bind"):
        unbound.apply(torch.ones(1, 5))
    with pytest.raises(ValueError, match="6 classes"):
        unbound.bind(TINY_LABELS).apply(torch.ones(1, 6))
