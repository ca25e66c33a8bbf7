"""Every flag of every method script (train.py, eval.py, predict.py of each package that has them) has a help
line, and the official dataset names parse with each method's defaults."""
import argparse
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train", "eval", "predict")


def _script_modules():
    found = []
    for pkg in sorted(p.parent.name for p in ROOT.glob("*/train.py")):
        for script in SCRIPTS:
            if (ROOT / pkg / f"{script}.py").is_file():
                found.append(f"{pkg}.{script}")
    return found


MODULES = _script_modules()


def test_discovers_the_method_scripts():
    assert {"hivg.train", "hivg.eval", "hivg.predict", "simvg.train", "simvg.eval", "simvg.predict"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_flag_has_help(name):
    parser = importlib.import_module(name).get_args_parser()
    missing = [a.option_strings[0] for a in parser._actions
               if a.option_strings and a.help != argparse.SUPPRESS and not (a.help or "").strip()]
    assert not missing, f"{name}: flags without help: {missing}"
    parser.format_help()  # every help string formats (no stray % placeholders)


HIVG_DATASETS = ("unc", "unc+", "gref", "gref_umd", "referit", "flickr", "mixup")
SIMVG_DATASETS = ("refcoco", "refcocoplus", "refcocog", "refcocoggoogle", "referit", "flickr30k", "grefcoco",
                  "mixed", "cocoall")


def _expected_file(method, args, split):
    """The annotation file the method's records() looks for (load_split's DataError names it)."""
    from vgcore.data.errors import DataError

    with pytest.raises(DataError) as e:
        method.records(args, split, False)
    return str(e.value)


@pytest.mark.parametrize("dataset", HIVG_DATASETS)
def test_hivg_official_dataset_names_reach_their_split_file(dataset, tmp_path):
    from hivg import method, train

    args = train.get_args_parser().parse_args(["--dataset", dataset, "--split_root", str(tmp_path)])
    msg = _expected_file(method, args, "val")
    assert f"{tmp_path / dataset / (dataset + '_val.pth')}: split file not found" in msg


SEQTR_FOLDER = {"refcoco": "refcoco-unc", "refcocoplus": "refcocoplus-unc", "refcocog": "refcocog-umd",
                "refcocoggoogle": "refcocog-google", "referit": "referitgame-berkeley", "flickr30k": "flickr30k",
                "mixed": "mixed", "cocoall": "refcoco-unc"}


@pytest.mark.parametrize("dataset", SIMVG_DATASETS)
def test_simvg_official_dataset_names_reach_their_annotation_file(dataset, tmp_path):
    from simvg import method, train

    args = train.get_args_parser().parse_args(["--dataset", dataset, "--data_root", str(tmp_path)])
    msg = _expected_file(method, args, "val")
    assert "file not found" in msg and str(tmp_path / "annotations") in msg
    if dataset in SEQTR_FOLDER:
        assert f"/{SEQTR_FOLDER[dataset]}/instances.json" in msg


def test_unknown_dataset_name_lists_the_accepted_ones(tmp_path):
    from hivg import method, train
    from vgcore.data.errors import DataError

    args = train.get_args_parser().parse_args(["--dataset", "refcoco", "--split_root", str(tmp_path)])
    with pytest.raises(DataError, match=r"'refcoco' is not a transvg dataset name: use one of unc, unc\+, gref"):
        method.records(args, "val", False)
    args = train.get_args_parser().parse_args(["--dataset", "nosuch", "--format", "seqtr",
                                               "--split_root", str(tmp_path)])
    with pytest.raises(DataError, match=r"'nosuch' is not a seqtr dataset name: use one of .*refcocoggoogle"):
        method.records(args, "val", False)


def test_simvg_dataset_choices_are_listed_by_argparse(capsys):
    from simvg import train

    with pytest.raises(SystemExit):
        train.get_args_parser().parse_args(["--dataset", "unc"])
    err = capsys.readouterr().err
    assert "invalid choice: 'unc'" in err and "refcocoggoogle" in err and "cocoall" in err


@pytest.mark.parametrize("name,official", [("refcoco+", "unc+"), ("refcocoplus", "unc+"), ("refcocog", "gref_umd"),
                                           ("refcocoggoogle", "gref"), ("unc+", "unc+"), ("gref", "gref")])
def test_hivg_seqtr_dataset_names_pick_the_official_text_layers(name, official):
    """--format seqtr / refer names select the bridge's text layers of the official HiVG name."""
    from hivg import recipes, train
    from hivg.config import bridge_text_layers_for

    args = train.get_args_parser().parse_args(["--format", "seqtr", "--dataset", name])
    cfg = recipes.model_config_from_args(args)
    assert cfg["dataset"] == official
    assert bridge_text_layers_for(cfg["dataset"]) == bridge_text_layers_for(official) != bridge_text_layers_for("unc")
