"""scripts/plot_curves.py: the training-curves figure from metrics.jsonl or TensorBoard events (synthetic runs)."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from scripts import plot_curves  # noqa: E402
from training.metrics import TENSORBOARD_TAGS, RunLog  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPOCHS = 5


def synthetic_records(offset: float) -> list[dict]:
    """One metrics.jsonl record per epoch; accuracies rise with the epoch (values exact in float32)."""
    return [{"epoch": e, "lr": 0.1, "train_loss": 2.0 - 0.25 * e,
             "train_top1": 20.0 + 10 * e + offset, "train_top5": 50.0 + 8 * e + offset,
             "val_top1": 15.0 + 9 * e + offset, "val_top5": 45.0 + 7.5 * e + offset,
             "val_loss": 2.5 - 0.25 * e, "epoch_time_s": 4.5, "images_per_s": 100.0} for e in range(EPOCHS)]


def write_jsonl(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def write_events(run_dir, records):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir))
    for r in records:
        for key, tag in plot_curves.SERIES.items():
            writer.add_scalar(tag, r[key], r["epoch"])
    writer.close()
    return run_dir


@pytest.fixture
def two_runs(tmp_path):
    baseline = write_jsonl(tmp_path / "imagenet-resnet18", synthetic_records(0.0))
    simam = write_jsonl(tmp_path / "imagenet-resnet18-simam-param0.1", synthetic_records(2.5))
    return baseline, simam


def run_main(argv):
    return plot_curves.main(plot_curves.get_args_parser().parse_args([str(a) for a in argv]))


def lines_by_label(fig):
    """{axis index: {legend label: Line2D}}"""
    return {i: {line.get_label(): line for line in ax.get_lines()} for i, ax in enumerate(fig.axes)}


def expected(records, key):
    return [r["epoch"] + 1 for r in records], [r[key] for r in records]


def test_writes_a_png_of_the_expected_size(two_runs, tmp_path, capsys):
    out = tmp_path / "figs" / "curves.png"  # the folder does not exist yet
    assert run_main([*two_runs, "-o", out, "--title", "ResNet-18"]) == str(out)
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(str(out))
    assert image.shape == (600, 1500, 4)  # figsize (10, 4) at dpi 150, side-by-side panels
    assert image.shape[1] > image.shape[0]
    assert image[..., :3].std() > 0.05  # not blank


def test_figure_content(two_runs):
    runs = [(plot_curves.default_label(d), plot_curves.load_run(str(d))) for d in two_runs]
    assert [label for label, _ in runs] == ["resnet18", "resnet18-simam-param0.1"]
    fig = plot_curves.plot_curves(runs, title="ResNet-18")
    try:
        assert len(fig.axes) == 2
        assert [ax.get_ylabel() for ax in fig.axes] == ["Top-1 accuracy (%)", "Top-5 accuracy (%)"]
        assert all(ax.get_xlabel() == "Epoch" for ax in fig.axes)
        for i, metric in enumerate(("top1", "top5")):
            ax = fig.axes[i]
            assert len(ax.get_lines()) == 4
            lines = lines_by_label(fig)[i]
            assert set(lines) == {f"{label} {split}" for label, _ in runs for split in ("train", "val")}
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            assert sorted(legend) == sorted(lines)
            for (label, _), offset in zip(runs, (0.0, 2.5)):
                records = synthetic_records(offset)
                train, val = lines[f"{label} train"], lines[f"{label} val"]
                assert train.get_linestyle() == "--" and val.get_linestyle() == "-"
                assert train.get_color() == val.get_color()
                for line, split in ((train, "train"), (val, "val")):
                    xs, ys = expected(records, f"{split}_{metric}")
                    assert list(line.get_xdata()) == xs
                    assert list(line.get_ydata()) == ys
            colours = {lines[f"{label} val"].get_color() for label, _ in runs}
            assert len(colours) == 2
    finally:
        plt.close(fig)


def test_labels_option(two_runs):
    runs = [(label, plot_curves.load_run(str(d))) for label, d in zip(("Baseline", "SimAM"), two_runs)]
    fig = plot_curves.plot_curves(runs)
    try:
        assert set(lines_by_label(fig)[0]) == {"Baseline train", "Baseline val", "SimAM train", "SimAM val"}
    finally:
        plt.close(fig)


def test_tensorboard_events_give_the_same_data(two_runs, tmp_path):
    events = write_events(tmp_path / "tb" / "imagenet-resnet18", synthetic_records(0.0))
    assert not (events / "metrics.jsonl").exists()
    assert plot_curves.load_run(str(events)) == plot_curves.load_run(str(two_runs[0]))
    assert plot_curves.default_label(str(events)) == "resnet18"
    out = tmp_path / "tb.png"
    run_main([events, two_runs[1], "-o", out])
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_repeated_epoch_keeps_the_last_line(tmp_path):
    records = synthetic_records(0.0)
    redo = dict(records[2], val_top1=99.0, train_top5=1.0)
    run = write_jsonl(tmp_path / "imagenet-resumed", records[:4] + [redo] + records[4:])
    series = plot_curves.load_run(str(run))
    assert [e for e, _ in series["val_top1"]] == list(range(EPOCHS))
    assert dict(series["val_top1"])[2] == 99.0 and dict(series["train_top5"])[2] == 1.0
    assert dict(series["val_top1"])[1] == records[1]["val_top1"]


def test_reads_back_every_series_that_runlog_writes(tmp_path):
    """RunLog.epoch (the training's writer) and plot_curves (the reader) agree on metrics.jsonl and on every
    TensorBoard tag."""
    records = [dict(r, lr=0.5 ** r["epoch"]) for r in synthetic_records(0.0)]  # exact in float32
    assert set(TENSORBOARD_TAGS) <= set(records[0])
    run = tmp_path / "imagenet-resnet18"
    run.mkdir()
    log = RunLog(str(run), enabled=True)
    for record in records:
        log.epoch(record)
    log.close()
    written = {key: [(r["epoch"], r[key]) for r in records] for key in TENSORBOARD_TAGS}
    assert plot_curves.read_tensorboard(str(run), TENSORBOARD_TAGS) == written
    accuracy = {key: written[key] for key in plot_curves.SERIES}
    assert plot_curves.load_run(str(run)) == accuracy  # from metrics.jsonl
    (run / "metrics.jsonl").unlink()
    assert plot_curves.load_run(str(run)) == accuracy  # from the TensorBoard events


@pytest.mark.parametrize("case", ["empty_folder", "missing_folder", "label_count", "bad_json", "no_accuracy"])
def test_bad_input_exits_with_one_line(case, two_runs, tmp_path, capsys):
    out = tmp_path / "never.png"
    argv = [*two_runs, "-o", out]
    if case == "empty_folder":
        (tmp_path / "empty").mkdir()
        argv, text = [two_runs[0], tmp_path / "empty", "-o", out], "neither metrics.jsonl nor TensorBoard"
    elif case == "missing_folder":
        argv, text = [tmp_path / "nowhere", "-o", out], "is not a folder"
    elif case == "label_count":
        argv, text = [*argv, "--labels", "only-one"], "1 labels given for 2 run folders"
    elif case == "bad_json":
        run = tmp_path / "broken"
        run.mkdir()
        (run / "metrics.jsonl").write_text('{"epoch": 0, "val_top1": 1.0}\n{"epoch": 1, \n')
        argv, text = [run, "-o", out], "metrics.jsonl:2"
    else:
        run = write_jsonl(tmp_path / "losses-only", [{"epoch": 0, "train_loss": 1.0}])
        argv, text = [run, "-o", out], "no accuracy values"
    assert plot_curves.cli([str(a) for a in argv]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message and text in message, message
    assert not out.exists()
