"""nodes/paths.py in-process with ComfyUI's folder_paths: datasets only from input/ and the operator's roots,
checkpoint and Make Dataset names inside their folders, symlinks included."""
import pytest


@pytest.fixture
def paths(comfy_pack, tmp_path, monkeypatch):
    """nodes.paths with ComfyUI's input folder at tmp_path/input and no extra dataset roots."""
    import folder_paths

    from scripts.comfy_inprocess import pack_module
    module = pack_module("nodes.paths")
    previous = folder_paths.get_input_directory()
    (tmp_path / "input").mkdir()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    monkeypatch.delenv(module.DATASET_ROOTS_ENV, raising=False)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, module.DATASET_ROOTS_KEY, ([], set()))
    yield module
    folder_paths.set_input_directory(previous)


def test_input_subfolders_by_name_or_absolute_path(paths, tmp_path):
    (tmp_path / "input" / "shapes").mkdir()
    inside = (tmp_path / "input" / "shapes").resolve()
    assert paths.dataset_folder("shapes", None) == inside
    assert paths.dataset_folder(paths.NO_DATASET, "shapes") == inside
    assert paths.dataset_folder(None, str(inside)) == inside  # what Make Dataset hands on


@pytest.mark.parametrize("name", ["/etc", "../outside", "shapes/../../outside", "..", "~/x", "C:\\Windows"])
def test_paths_outside_the_input_folder_are_refused(paths, name):
    with pytest.raises(ValueError) as error:
        paths.dataset_folder(None, name)
    message = str(error.value)
    assert repr(name) in message and "input folder" in message and paths.DATASET_ROOTS_ENV in message, message


def test_refusal_does_not_depend_on_what_exists(paths, tmp_path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "passwords.txt").write_text("x")

    def message(name):
        with pytest.raises(ValueError) as error:
            paths.dataset_folder(None, name)
        return str(error.value)
    real, missing = message(str(tmp_path / "secret")), message(str(tmp_path / "no_such"))
    assert real.replace("secret", "X") == missing.replace("no_such", "X")
    assert "passwords" not in real


def test_a_symlink_in_input_that_leads_out_is_refused(paths, tmp_path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "input" / "link").symlink_to(tmp_path / "secret", target_is_directory=True)
    for choice, path in (("link", None), (None, "link"), (None, str(tmp_path / "input" / "link"))):
        with pytest.raises(ValueError, match="outside") as error:
            paths.dataset_folder(choice, path)
        assert "secret" not in str(error.value).replace(str(tmp_path / "input"), "")  # not where it leads


def test_operator_roots_from_the_environment_and_extra_model_paths(paths, tmp_path, monkeypatch):
    import folder_paths
    for name in ("env_root/cats", "yaml_root/dogs"):
        (tmp_path / name).mkdir(parents=True)
    with pytest.raises(ValueError):
        paths.dataset_folder(None, str(tmp_path / "env_root" / "cats"))
    monkeypatch.setenv(paths.DATASET_ROOTS_ENV, f"{tmp_path / 'env_root'}")
    folder_paths.add_model_folder_path(paths.DATASET_ROOTS_KEY, str(tmp_path / "yaml_root"))
    assert paths.dataset_folder(None, str(tmp_path / "env_root" / "cats")) == (tmp_path / "env_root/cats").resolve()
    assert paths.dataset_folder(None, str(tmp_path / "yaml_root" / "dogs")) == (tmp_path / "yaml_root/dogs").resolve()
    choices = paths.dataset_choices()
    assert str((tmp_path / "env_root" / "cats").resolve()) in choices
    assert str((tmp_path / "yaml_root" / "dogs").resolve()) in choices
    with pytest.raises(ValueError):  # a root allows its own tree only
        paths.dataset_folder(None, str(tmp_path))


def test_register_keeps_the_operators_dataset_roots(paths, tmp_path):
    import folder_paths
    folder_paths.add_model_folder_path(paths.DATASET_ROOTS_KEY, str(tmp_path))
    paths.register_model_folder()
    assert folder_paths.get_folder_paths(paths.DATASET_ROOTS_KEY) == [str(tmp_path)]


def test_make_dataset_folder_stays_in_input_even_through_a_symlink(paths, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "input" / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert paths.input_subfolder("new_set") == (tmp_path / "input" / "new_set").resolve()
    for bad in ("../x", "/tmp/x", "out/x"):
        with pytest.raises(ValueError, match="input folder"):
            paths.input_subfolder(bad)


def test_tensorboard_logs_stay_in_the_output_folders_log_subfolder(paths, tmp_path):
    import folder_paths
    previous = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path / "output"))
    try:
        root = (tmp_path / "output" / paths.LOG_FOLDER).resolve()
        assert paths.log_folder("shapes") == root / "shapes"
        assert paths.log_folder(" runs/a ") == root / "runs" / "a"
        for bad in ("../x", "/tmp/x", "a/../../x", "C:/x", ""):
            with pytest.raises(ValueError, match="log_dir"):
                paths.log_folder(bad)
    finally:
        folder_paths.set_output_directory(previous)
