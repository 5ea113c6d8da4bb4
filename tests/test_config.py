import pytest

from cnnlab.config import load_config, recipe_names
from cnnlab.errors import ConfigError


def test_seed_recipes_match_the_reports():
    a = load_config("fashion", "seed-a")
    assert (a.train.epochs, a.train.batch_size, a.optim.name, a.optim.lr, a.optim.weight_decay) == (
        20,
        64,
        "adam",
        1e-3,
        1e-5,
    )
    b = load_config("fashion", "seed-b")
    assert (b.model.name, b.train.epochs, b.train.batch_size) == ("seed-b", 50, 1024)
    assert {"seed-a", "seed-b"} <= set(recipe_names("fashion"))


def test_overrides_are_typed():
    cfg = load_config("fashion", "seed-a", ["train.epochs=3", "optim.lr=3e-4", "model.activation=sigmoid"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 3e-4 and cfg.model.activation == "sigmoid"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train: {epochz: 3}", "train.epochz: unknown key; did you mean train.epochs?"),
        ("train: {epochs: three}", "train.epochs: Input should be a valid integer"),
        ("train: {batch_size: 0}", "train.batch_size: Input should be greater than 0"),
        ("train: {epochs: -1}", "train.epochs: Input should be greater than 0"),
        ("optim: {name: rmsprop}", "optim.name: Input should be"),
        ("- a list", "a recipe must be a mapping"),
        ("train: {epochs: [1, 2", "cannot read recipe"),
        ("task: facade", "recipe is for task 'facade'"),
        ("augment: {min_crop: 0.8, max_crop: 0.5}", "augment: min_crop 0.8 is above max_crop 0.5"),
    ],
)
def test_bad_recipes_are_refused_in_one_line(tmp_path, text, expected):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config("fashion", str(path))
    assert expected in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_recipe_lists_the_choices():
    with pytest.raises(ConfigError, match=r"recipe 'nope' not found for fashion; choose one of best, fast, seed-a"):
        load_config("fashion", "nope")


TYPOS = [("fashion", "seeda", "seed-a"), ("facade", "unte", "unet"), ("fashion", "Fast", "fast"),
         ("classify", "smal", "small")]  # fmt: skip


@pytest.mark.parametrize(("task", "typo", "meant"), TYPOS)
def test_a_recipe_typo_gets_a_suggestion_as_set_keys_do(task, typo, meant):
    with pytest.raises(ConfigError, match=rf"recipe '{typo}' not found for {task}; did you mean {meant}\? Or"):
        load_config(task, typo)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"expected section.key=value"):
        load_config("fashion", "seed-a", ["epochs"])


def test_shift_tta_is_refused_for_segmentation():
    with pytest.raises(ConfigError, match=r"train\.tta_shift is for classification"):
        load_config("facade", "unet", ["train.tta_shift=1"])


def test_scale_tta_is_for_segmentation_with_sane_factors():
    assert load_config("facade", "unet", ["train.tta_scales=[0.75, 1, 1.25]"]).train.tta_scales == [0.75, 1, 1.25]
    with pytest.raises(ConfigError, match=r"train\.tta_scales is for segmentation"):
        load_config("fashion", "seed-a", ["train.tta_scales=[1, 2]"])
    with pytest.raises(ConfigError, match=r"each factor must be between 0.25 and 4"):
        load_config("facade", "unet", ["train.tta_scales=[0]"])
