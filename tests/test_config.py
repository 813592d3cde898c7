import pytest

from config import Config, UserError, describe_recipe, parse_args, recipe
from runtime import resolve_device


def test_defaults_and_overrides_in_both_forms():
    assert parse_args([]) == Config()
    cfg = parse_args(["--epochs=30", "--lr", "0.05", "--data_dir=/x", "--dry-run", "--amp=false"])
    assert (cfg.epochs, cfg.lr, cfg.data_dir, cfg.dry_run, cfg.amp) == (30, 0.05, "/x", True, False)


def test_epochs_alone_select_the_recipe_and_given_flags_win():
    for epochs in (1, 15, 22, 30, 60, 200):
        expected = recipe(epochs)
        assert {k: getattr(parse_args([f"--epochs={epochs}"]), k) for k in expected} == expected
        assert {k: getattr(Config(epochs=epochs), k) for k in expected} == expected
    # The required augmentations stay on at every length.
    assert min(Config().affine_p, Config().hole_p, Config().cutmix_p, Config().flip_p) > 0
    assert recipe(30) != recipe(15)
    # DilatedNet keeps the 15-epoch shift at every length; Net's grows.
    assert parse_args(["--model=dilated", "--epochs=40"]).translate == recipe(15)["translate"] < recipe(40)["translate"]
    assert parse_args(["--epochs=30", "--cutmix-p=0", "--translate=1"]).cutmix_p == 0
    assert parse_args(["--epochs=30", "--translate=1"]).translate == 1
    assert parse_args(["--epochs=30"], base=Config()).cutmix_p == Config().cutmix_p  # a saved run keeps its own


def test_help_lists_every_field_with_default_and_comment(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for field in Config.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in text
    assert "passes over the training split (default: 15)" in text
    assert f"random 32x32 crop (0: off) (default: recipe(epochs, model) in config.py; {recipe(15)['translate']} at 15 " \
           "epochs)" in text
    assert "CutMixed (0: off) (default: 0.2)" in text


@pytest.mark.parametrize("argv, words", [
    (["--epoch=3"], "--epoch=3"),
    (["--epochs=three"], "--epochs"),
    (["--lr=fast"], "--lr"),
    (["--amp=maybe"], "--amp"),
    (["--epochs=0"], "--epochs"),
    (["--hole-size=40"], "--hole-size"),
    (["--translate=-1"], "--translate"),
    (["--cutmix-p=1.5"], "--cutmix-p"),
    (["--cutmix-decay=2"], "--cutmix-decay"),
    (["--aug-decay=-0.5"], "--aug-decay"),
    (["--batch-size=-1"], "--batch-size"),
    (["--workers=-2"], "--workers"),
    (["--lr=0"], "--lr"),
    (["--weight-decay=-0.1"], "--weight-decay"),
    (["--flip-p=-0.5"], "--flip-p"),
    (["--model=resnet"], "--model"),
    (["--ema=1"], "--ema"),
])
def test_bad_values_are_one_line_errors_naming_the_key(argv, words):
    with pytest.raises(UserError) as e:
        parse_args(argv)
    message = str(e.value)
    assert message.startswith("error:") and words in message and "\n" not in message


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(UserError, match="--device=tpu is not supported"):
        resolve_device("tpu")


def test_the_resolved_recipe_is_said_in_one_line():
    assert describe_recipe(parse_args(["--epochs=30"])) == \
        "recipe for 30 epochs: shift 4 px, affine/hole p 0.25 fading to 0, CutMix p 0.2 fading to 0"
    assert describe_recipe(parse_args(["--hole-p=0.5", "--aug-decay=0", "--cutmix-p=0"])) == \
        "recipe for 15 epochs: shift 2 px, affine p 0.25, hole p 0.5, CutMix p 0"
