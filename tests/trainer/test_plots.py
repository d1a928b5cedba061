"""Training curves as PNGs: one picture per stage, panels for the metrics it logged, nothing without matplotlib.

The records are shaped as the stages write them (tests/e2e/test_demo.py runs the real thing): transformers' log
keys for sft/reward, TRL v0.7's PPO stats, TRL 1.x's GRPO and DPO metrics, and a last record carrying the result.
"""

import logging
import math
import struct
import sys

import pytest

from rlhf_trainer.plots import before_after, panels_for, series_points, write_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def stamped(stage, kind, total, metrics_by_step, result=None):
    records = [{"stage": stage, "kind": kind, "step": step, "totalSteps": total, "metrics": metrics,
                "time": f"2026-11-29T12:{step // 60:02d}:{step % 60:02d}+00:00"}
               for step, metrics in metrics_by_step]
    if result is not None:
        records.append({**records[-1], "metrics": result["metrics"], "result": result})
    return records


def sft_records(steps=40):
    logs = [(s, {"loss": 6.5 * 0.9 ** s, "grad_norm": 1.2, "learning_rate": 1e-3, "epoch": s / 10})
            for s in range(1, steps + 1)]
    logs += [(steps, {"train_loss": 2.1, "epoch": 4.0}), (steps, {"eval_loss": 1.34, "epoch": 4.0})]
    result = {"phase": "Succeeded", "metrics": {"train_loss": 2.1, "eval_loss": 1.34}}
    return stamped("sft", "sft", steps, logs, result)


def reward_records(steps=20):
    logs = [(s, {"loss": 0.7 * 0.8 ** s, "grad_norm": 0.3, "learning_rate": 1e-3}) for s in range(1, steps + 1)]
    logs.append((steps, {"eval_loss": 0.002, "eval_accuracy": 1.0, "eval_margin": 6.5}))
    return stamped("reward", "reward", steps, logs,
                   {"phase": "Succeeded", "metrics": {"eval_accuracy": 1.0, "eval_loss": 0.002}})


def ppo_records(steps=50):
    logs = [(s, {"env/reward_mean": s / 20 - 0.2, "env/reward_std": 2.5, "ppo/mean_scores": s / 20 - 0.2,
                 "objective/kl": math.sqrt(s), "objective/kl_coef": 0.5 - s * 1e-4, "ppo/loss/policy": -0.04,
                 "ppo/loss/value": 2.1, "objective/entropy": 21.0}) for s in range(1, steps + 1)]
    return stamped("ppo", "ppo", steps, logs, {"phase": "Succeeded", "metrics": {
        "meanScoreFirstSteps": 0.02, "meanScoreLastSteps": 2.3, "kl": 4.8,
        "rewardBefore": 0.67, "rewardAfter": 2.67, "vaderBefore": 0.41, "vaderAfter": 0.71}})


def grpo_records(steps=50):
    def log(s):
        return {"loss": 0.01, "reward": s / 25, "reward_std": 0.4, "kl": s / 500, "entropy": 2.0,
                "completions/mean_length": 30 - s / 5, "clip_ratio/region_mean": 0.02, "frac_reward_zero_std": 0.1,
                "rewards/positive/mean": s / 50, "rewards/positive/std": 0.2, "rewards/short/mean": s / 50,
                "rewards/short/std": 0.1, "num_tokens": 1000.0 * s}
    result = {"phase": "Succeeded", "metrics": {"rewardBefore": 0.1, "rewardAfter": 1.9}}
    return stamped("grpo", "grpo", steps, [(s, log(s)) for s in range(1, steps + 1)], result)


def dpo_records(steps=50):
    def log(s):
        return {"loss": 0.69 - s / 100, "rewards/chosen": s / 40, "rewards/rejected": -s / 40,
                "rewards/accuracies": min(1.0, 0.5 + s / 60), "rewards/margins": s / 20, "logps/chosen": -40.0,
                "logps/rejected": -45.0, "logits/chosen": 1.0, "logits/rejected": 1.0}
    logs = [(s, log(s)) for s in range(1, steps + 1)]
    logs += [(s, {"eval_loss": 0.6 - s / 200, "eval_rewards/accuracies": 0.8, "eval_rewards/margins": s / 25})
             for s in (25, 50)]
    return stamped("dpo", "dpo", steps, logs, {"phase": "Succeeded", "metrics": {"eval_loss": 0.35}})


RECORDS = {"sft": sft_records, "reward": reward_records, "ppo": ppo_records, "grpo": grpo_records,
           "dpo": dpo_records}


def png_size(path):
    """(width, height) in pixels, from the PNG header; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def grid(panels):
    """The picture's size for this many panels: three to a row, 400 x 280 pixels each, a title on top."""
    columns = min(3, panels)
    return 400 * columns, 280 * math.ceil(panels / columns) + 40


@pytest.mark.parametrize(("kind", "panels"), [("sft", 1), ("reward", 2), ("ppo", 4), ("grpo", 7), ("dpo", 4)])
def test_each_kind_draws_its_panels_into_a_png(kind, panels, tmp_path):
    path = write_curves(kind, RECORDS[kind](), tmp_path / kind / "curves.png")
    assert path == tmp_path / kind / "curves.png"
    assert png_size(path) == grid(panels)
    assert path.stat().st_size > 10_000  # drawn curves, not an empty canvas
    import matplotlib.image

    pixels = matplotlib.image.imread(path)  # decodes: a whole, valid picture
    assert pixels.shape[:2] == grid(panels)[::-1]
    assert not list(tmp_path.glob(f"{kind}/*.tmp"))


def test_a_grpo_picture_shows_each_reward_function():
    titles = [panel.title for panel in panels_for("grpo", grpo_records())]
    functions = next(panel for panel in panels_for("grpo", grpo_records()) if panel.title == "Reward per function")
    assert "Reward per function" in titles
    assert [series.label for series in functions.series] == ["positive", "short"]
    assert "Reward per function" not in [panel.title for panel in panels_for("grpo", ppo_records())]


def test_panels_whose_metrics_were_not_logged_are_left_out(tmp_path):
    only_reward_and_kl = stamped("grpo", "grpo", 10, [(s, {"reward": s / 10, "kl": s / 100}) for s in range(1, 11)])
    assert png_size(write_curves("grpo", only_reward_and_kl, tmp_path / "grpo.png")) == grid(2)

    no_eval = [record for record in reward_records() if "eval_loss" not in record["metrics"]]
    assert png_size(write_curves("reward", no_eval, tmp_path / "reward.png")) == grid(1)

    ppo_without_held_out = ppo_records()[:-1]
    assert png_size(write_curves("ppo", ppo_without_held_out, tmp_path / "ppo.png")) == grid(3)


def test_nothing_to_draw_writes_nothing(tmp_path):
    assert write_curves("sft", [], tmp_path / "empty.png") is None
    unrelated = stamped("sft", "sft", 5, [(s, {"learning_rate": 1e-3}) for s in range(1, 6)])
    assert write_curves("sft", unrelated, tmp_path / "unrelated.png") is None
    assert write_curves("no-such-kind", sft_records(), tmp_path / "unknown.png") is None
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_no_picture_and_one_line_in_the_log(tmp_path, monkeypatch, caplog):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes `import` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.DEBUG, logger="rlhf_trainer.plots"):
        assert write_curves("ppo", ppo_records(), tmp_path / "ppo.png") is None
    assert not (tmp_path / "ppo.png").exists()
    assert [record.getMessage() for record in caplog.records] == [
        "matplotlib is not installed: no training curves drawn (pip install matplotlib)"]


def test_the_same_records_give_the_same_bytes(tmp_path):
    first = write_curves("dpo", dpo_records(), tmp_path / "a.png").read_bytes()
    second = write_curves("dpo", dpo_records(), tmp_path / "b.png").read_bytes()
    assert first == second


def test_drawing_leaves_pyplot_alone(tmp_path):
    if "matplotlib.pyplot" in sys.modules:
        pytest.skip("pyplot was imported by something else in this session")
    write_curves("sft", sft_records(), tmp_path / "sft.png")
    assert "matplotlib.pyplot" not in sys.modules  # no global backend switch, no figure registry


def test_a_step_logged_twice_keeps_its_latest_value():
    """A resumed run repeats the steps after its last checkpoint: the curve shows the run that went on."""
    first_run = [(s, {"loss": 1.0}) for s in (1, 2, 3, 4)]
    resumed = [(s, {"loss": 0.5}) for s in (3, 4, 5)]
    records = stamped("sft", "sft", 5, first_run + resumed)
    steps, values, spreads = series_points(panels_for("sft", records)[0].series[0], records)
    assert steps == [1, 2, 3, 4, 5]
    assert values == [1.0, 1.0, 0.5, 0.5, 0.5]
    assert spreads is None


def test_score_spread_is_the_logged_std():
    records = ppo_records(steps=3)[:-1]
    steps, values, spreads = series_points(panels_for("ppo", records)[0].series[0], records)
    assert steps == [1, 2, 3]
    assert values == pytest.approx([-0.15, -0.1, -0.05])
    assert spreads == [2.5, 2.5, 2.5]


def test_held_out_scores_before_and_after_come_from_the_result():
    metrics = ppo_records()[-1]["result"]["metrics"]
    assert before_after(metrics) == [("reward", 0.67, 2.67), ("VADER", 0.41, 0.71)]
    assert before_after({"rewardBefore": 0.1}) == []
