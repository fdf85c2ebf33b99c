"""networks.identify_network: given values win, then our checkpoints' record, then the release's ``arch`` field and
the weights' key layout; an undecidable network is a ValueError naming the candidates, never a silent guess."""

import pytest

import networks
import networks.identify
from networks import NetworkSpec, identify_network


def weights(arch, attention_type="none", attention_param=None):
    return networks.create_net(arch, attention_type, attention_param, num_classes=3).state_dict()


@pytest.fixture(scope="module")
def simam18():
    return weights("resnet18", "simam")


@pytest.fixture(scope="module")
def ours(simam18):
    """A checkpoint of ours: the weights and the record of the network they belong to."""
    return {"state_dict": simam18, "arch": "resnet18", "attention_type": "simam", "attention_param": 0.2,
            "num_classes": 3}


def test_no_checkpoint_is_resnet18_without_attention():
    assert identify_network() == NetworkSpec("resnet18", "none", None)
    assert identify_network(None, attention_type="simam") == NetworkSpec("resnet18", "simam", 0.1)


def test_our_record_wins_over_the_layout(ours):
    assert identify_network(ours) == NetworkSpec("resnet18", "simam", 0.2)
    # the record is believed, not checked against the keys (loading does that, with a diagnosis)
    assert identify_network({**ours, "attention_type": "srm"}) == NetworkSpec("resnet18", "srm", None)


def test_given_values_win_over_the_record(ours):
    assert identify_network(ours, "resnet34", "se", 8) == NetworkSpec("resnet34", "se", 8)
    assert identify_network(ours, attention_param=0.3) == NetworkSpec("resnet18", "simam", 0.3)
    assert identify_network(ours, arch="ResNet50") == NetworkSpec("resnet50", "simam", 0.2)


def test_record_param_only_for_the_recorded_attention(ours):
    assert identify_network(ours, attention_type="simam") == NetworkSpec("resnet18", "simam", 0.2)
    assert identify_network(ours, attention_type="se") == NetworkSpec("resnet18", "se", 16)
    assert identify_network(ours, attention_type="none") == NetworkSpec("resnet18", "none", None)


def test_release_file_by_arch_field_and_layout(simam18):
    release = {"epoch": 100, "arch": "resnet18", "best_acc1": 71.3,
               "state_dict": {f"module.{k}": v for k, v in simam18.items()}}
    assert identify_network(release) == NetworkSpec("resnet18", "simam", 0.1)
    with pytest.raises(ValueError, match="cannot tell"):  # the arch field narrows the layout search
        identify_network({**release, "arch": "resnet34"})


def test_bare_state_dict_by_layout():
    assert identify_network(weights("resnet18", "se")) == NetworkSpec("resnet18", "se", 16)
    assert identify_network(weights("resnet18", "se"), attention_param=4) == NetworkSpec("resnet18", "se", 4)


def test_layout_that_fits_no_network_needs_flags():
    se8 = weights("resnet18", "se", 8)
    with pytest.raises(ValueError, match="cannot tell which network se8.pth holds") as raised:
        identify_network(se8, source="se8.pth")
    assert "fit none" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="cannot tell .*--attention_type se"):
        identify_network(se8, attention_type="se")
    assert identify_network(se8, "resnet18", "se", 8) == NetworkSpec("resnet18", "se", 8)


def test_layout_that_fits_several_networks_lists_them(monkeypatch, simam18):
    monkeypatch.setattr(networks.identify, "identify_layouts",
                        lambda state_dict: [("resnet18", "simam"), ("resnet34", "simam")])
    with pytest.raises(ValueError, match="cannot tell") as raised:
        identify_network(simam18)
    assert "-a resnet18 --attention_type simam or -a resnet34 --attention_type simam" in str(raised.value)
    assert identify_network(simam18, arch="resnet34") == NetworkSpec("resnet34", "simam", 0.1)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="valid choices"):
        identify_network(None, arch="resnet9")
    with pytest.raises(ValueError, match="valid choices"):
        identify_network(None, attention_type="nope")
