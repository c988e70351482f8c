"""The store behind the live training panel's routes (nodes/training_runs.py), in-process: bounded, and its
ids refuse anything that is not one it made."""
import pytest
import torch


@pytest.fixture
def store(comfy_pack):
    from scripts.comfy_inprocess import pack_module
    return pack_module("nodes.training_runs")


def point(step):
    return {"step": step, "loss": 1.0 / step, "lr": 1e-3, "images_per_s": 10.0, "eta_s": 0.0}


def test_a_run_keeps_its_history_and_the_oldest_runs_and_points_give_way(store):
    runs = store.RunStore(max_runs=2, max_points=8)
    first = runs.start("4", "p1", "a.safetensors", 20)
    for step in range(1, 21):
        runs.add_point(first, point(step))
    history = runs.history(first.id)
    assert history["checkpoint"] == "a.safetensors" and history["status"] == "running" and history["total"] == 20
    steps = [p["step"] for p in history["points"]]
    assert len(steps) <= 8 and steps == sorted(steps) and steps[0] == 1  # thinned, the start kept
    runs.finish(first, "done")
    second, third = runs.start("4", "p2", "b.safetensors", 5), runs.start("4", "p3", "c.safetensors", 5)
    assert [s["id"] for s in runs.summaries()] == [third.id, second.id]  # newest first, the oldest dropped
    assert runs.history(first.id) is None


@pytest.mark.parametrize("bad", ["", "abc", "../../etc/passwd", "..%2F..%2Fsecret", "0" * 31 + "/", "G" * 32])
def test_anything_but_a_run_id_is_refused(store, bad):
    with pytest.raises(ValueError, match="32 hex digits"):
        store.RUNS.history(bad)


def test_validation_images_go_to_the_temp_folder_under_names_the_server_makes(store, tmp_path):
    runs = store.RunStore()
    run = runs.start(None, None, "m.safetensors", 10)
    entry = store.save_validation_images(run, 5, torch.rand(2, 3, 16, 16), ["a red circle", "a blue square"],
                                         str(tmp_path))
    runs.add_validation(run, entry)
    assert [i["prompt"] for i in entry["images"]] == ["a red circle", "a blue square"]
    assert all((tmp_path / i["filename"]).is_file() and i["type"] == "temp" and run.id in i["filename"]
               for i in entry["images"])
    assert runs.history(run.id)["validations"] == [entry]


def test_stop_is_asked_of_a_running_run_only_and_one_checkpoint_trains_once(store):
    from t2i_core.training.state import TrainingError
    runs = store.RunStore()
    run = runs.start("4", "p", "a.safetensors", 10, output="/models/a.safetensors", background=True)
    assert runs.get("") is run and runs.get(run.id) is run and runs.get("0" * 32) is None
    with pytest.raises(TrainingError, match=f"a.safetensors is being trained by run {run.id}"):
        runs.start("7", "q", "a.safetensors", 10, output="/models/a.safetensors")
    assert runs.request_stop(run.id) is run and run.stop_requested
    summary = runs.history(run.id)
    assert summary["status"] == "stopping" and summary["background"]
    assert "output" not in summary and "client" not in summary  # the server's path stays on the server
    runs.finish(run, "failed", "boom")
    assert runs.history(run.id)["status"] == "failed" and runs.history(run.id)["error"] == "boom"
    later = runs.start("4", "r", "a.safetensors", 10, output="/models/a.safetensors")  # the old run has ended
    assert runs.request_stop(later.id) is later and runs.request_stop("0" * 32) is None
    ended = runs.start("4", "s", "b.safetensors", 10)
    runs.finish(ended, "done")
    runs.request_stop(ended.id)
    assert not ended.stop_requested and runs.history(ended.id)["status"] == "done"
    with pytest.raises(ValueError, match="32 hex digits"):
        runs.request_stop("../x")
