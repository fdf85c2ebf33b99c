"""The README stays short, its docs/ pages are linked and their links lead somewhere, and every option is documented."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOC_PAGES]

# Every `--flag` the README documented before it was split into docs/ pages (training's and the scripts'):
# each must stay documented somewhere in README.md or docs/*.md.
FLAGS_DOCUMENTED_BEFORE_THE_SPLIT = """
--accum-steps --all --amp --arch --attention-overhead --attention_param --attention_type --augmix-severity
--auto-augment --benchmark --benchmark-batch --benchmark-rounds --bias-weight-decay --channels-last
--checkpoint-every-steps --checkpoint-interval --checkpoints --checks --ckpt --compile --config --cos_lr
--cutmix-alpha --detector --device --dist-timeout --dist-url --dummy --epochs --eval-ema --eval-json --format --gpu
--help --image-size --images --input-pipeline --json --label-smoothing --labels --log_freq --logdir --lr --lr-gamma
--lr-milestones --lr-min --lr-scheduler --lr-step-size --max-bad-steps --max-restarts --mixup-alpha --model-ema
--model-ema-decay --model-ema-steps --multiprocessing-distributed --nesterov --nnodes --no-compile --no-progress
--no-tf32 --norm-weight-decay --nproc_per_node --num-classes --ra-magnitude --random-erase --rank --rdzv-endpoint
--resume --rounds --save_weights --seed --simam-impl --skip-bad-images --steps --suite --sync-bn --threads
--time-budget --tolerance --train-crop-size --train-size-schedule --tta --val-crop-size --val-resize-size --warmup
--warmup-epochs --wd --weights --world-size
""".split()

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(path):
    """The lines of a markdown file outside fenced code blocks."""
    lines, in_code = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return lines


def links(path):
    """The targets of the markdown links `[text](target)` in a file, leaving out code blocks and code spans."""
    text = "\n".join(re.sub(r"`[^`]*`", "", line) for line in prose_lines(path))
    return LINK.findall(text)


def github_anchor(heading):
    """GitHub's id for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    return {github_anchor(line.lstrip("#")) for line in prose_lines(path) if re.match(r"#{1,6} ", line)}


def documentation():
    return "\n".join(page.read_text() for page in PAGES)


def is_documented(flag, text):
    return re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", text) is not None


def test_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_prose_line_over_200_characters(page):
    # Code blocks are left out: the README's first command is one line by design (tests/test_readme.py).
    long_lines = [line[:60] + "..." for line in prose_lines(page) if len(line) > 200]
    assert not long_lines, f"{page.name}: lines over 200 characters: {long_lines}"


def test_there_are_doc_pages_and_the_readme_links_every_one():
    assert DOC_PAGES, "docs/*.md is empty"
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links(README)}
    assert [page.name for page in DOC_PAGES if page.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: {broken}"


def test_every_training_option_is_documented():
    import main_imagenet

    text = documentation()
    options = [option for action in main_imagenet.get_args_parser()._actions for option in action.option_strings
               if option.startswith("--") and option != "--help"]
    assert len(options) > 50
    assert [option for option in options if not is_documented(option, text)] == []


def test_flags_documented_before_the_split_stay_documented():
    text = documentation()
    assert [flag for flag in FLAGS_DOCUMENTED_BEFORE_THE_SPLIT if not is_documented(flag, text)] == []
