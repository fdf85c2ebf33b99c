"""The uint8 input pipeline checked against torchvision's PIL pipeline: same crops and flips under the same seed,
the same pixels (to resampling rounding), the same normalised floats, and the loaders' handling of odd files."""


import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F2

from scripts.make_sample_data import make_dataset
from training import data, presets
from training.errors import BadImageError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
MEAN = torch.tensor(presets.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(presets.IMAGENET_STD).view(3, 1, 1)


def to_levels(normalised: torch.Tensor) -> torch.Tensor:
    """The PIL pipeline's output back on the 0-255 scale."""
    return (normalised * STD + MEAN) * 255


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A small photo-like HWC uint8 image: colour gradients plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack([200 * x + 30, 180 * y + 40, 120 * (1 - x * y) + 60], -1) + rng.normal(0, 12, (height, width, 3))
    return image.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.JPEG"
    Image.fromarray(photo(120, 90)).save(path, quality=90)
    return str(path)


def test_train_picks_torchvisions_crop_and_flip(jpeg):
    pil_tf, uint8_tf = presets.train_transform(48), presets.train_transform(48, "uint8")
    image, decoded = data.load_rgb(jpeg), data.load_uint8(jpeg)
    flips = set()
    for seed in range(20):
        torch.manual_seed(seed)
        box = transforms.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        flip = bool(torch.rand(1) < 0.5)
        after_reference = torch.get_rng_state()
        torch.manual_seed(seed)
        expected = to_levels(pil_tf(image))
        torch.manual_seed(seed)
        ours = uint8_tf(decoded)
        assert torch.equal(torch.get_rng_state(), after_reference)  # nothing more, nothing less drawn
        assert ours.dtype == torch.uint8 and ours.shape == (3, 48, 48) and ours.is_contiguous()
        same_box = F2.resized_crop(decoded, *box, [48, 48], antialias=True)
        assert torch.equal(ours, same_box.flip(-1) if flip else same_box)
        difference = (ours.float() - expected).abs()
        assert difference.mean() < 0.5 and difference.max() <= 1.5
        flips.add(flip)
    assert flips == {False, True}


@pytest.mark.parametrize("height, width", [(30, 40), (40, 30), (20, 200), (200, 20)])  # thin: central fallback
def test_crop_distribution_is_torchvisions(height, width):
    """Over hundreds of seeds, on noise (where any other box or flip shows), the uint8 output is torchvision's
    PIL output to resampling rounding."""
    array = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image, tensor = Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1)
    pil_tf, uint8_tf = presets.train_transform(8), presets.train_transform(8, "uint8")
    worst = 0.0
    for seed in range(300):
        torch.manual_seed(seed)
        expected = to_levels(pil_tf(image))
        torch.manual_seed(seed)
        worst = max(worst, (uint8_tf(tensor).float() - expected).abs().max().item())
    assert worst <= 2.5


@pytest.mark.parametrize("width, height, resize, crop", [(120, 90, 64, 56), (90, 120, 64, 56), (101, 77, 36, 32),
                                                         (77, 101, 50, 50)])
def test_eval_is_torchvisions_resize_and_centre_crop(tmp_path, width, height, resize, crop):
    path = str(tmp_path / "image.JPEG")
    Image.fromarray(photo(width, height, seed=2)).save(path, quality=90)
    expected = to_levels(presets.eval_transform(resize, crop)(data.load_rgb(path)))
    ours = presets.eval_transform(resize, crop, "uint8")(data.load_uint8(path))
    assert ours.dtype == torch.uint8 and ours.shape == (3, crop, crop) and ours.is_contiguous()
    difference = (ours.float() - expected).abs()
    assert difference.mean() < 0.5 and difference.max() <= 1.5


def test_normalize_on_device_is_totensor_and_normalize():
    batch = torch.randint(0, 256, (4, 3, 10, 12), dtype=torch.uint8)
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(presets.IMAGENET_MEAN,
                                                                                presets.IMAGENET_STD)])
    expected = torch.stack([reference(image.permute(1, 2, 0).numpy()) for image in batch])
    ours = presets.normalize_on_device(batch)
    assert ours.dtype == torch.float32 and ours.is_contiguous()
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    channels_last = presets.normalize_on_device(batch, torch.channels_last)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(channels_last, expected, rtol=0, atol=1e-6)
    half = presets.normalize_on_device(batch, torch.channels_last, torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(half.float(), expected, rtol=1e-2, atol=1e-2)
    assert presets._mean_std(batch.device)[0] is presets._mean_std(batch.device)[0]  # made once per device


@pytest.mark.parametrize("mode, extension", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "png"), ("RGBA", "png"),
                                             ("P", "png"), ("LA", "png")])
def test_any_image_mode_loads_as_pils_rgb(tmp_path, mode, extension):
    path = str(tmp_path / f"image.{extension}")
    Image.fromarray(photo(40, 30)).convert(mode).save(path)
    ours = data.load_uint8(path)
    assert ours.dtype == torch.uint8 and ours.shape == (3, 30, 40)
    assert torch.equal(ours, torch.from_numpy(np.array(data.load_rgb(path))).permute(2, 0, 1))
    assert presets.train_transform(16, "uint8")(ours).shape == (3, 16, 16)


@pytest.mark.parametrize("content", [b"truncated", b"not an image at all", None])
def test_unreadable_file_is_a_bad_image_error_naming_it(jpeg, tmp_path, content):
    path = tmp_path / "bad.JPEG"
    if content == b"truncated":
        content = open(jpeg, "rb").read()[:300]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadImageError, match="cannot read image") as error:
        data.image_loader("uint8")(str(path))
    assert str(path) in str(error.value)


def test_unknown_pipeline_is_refused():
    for make in (presets.train_transform, presets.eval_transform, data.image_loader):
        with pytest.raises(ValueError, match="uint8"):
            make(pipeline="float")


def data_args(root, pipeline, dummy=0):
    return data.DataOptions(data=str(root), dummy=dummy, train=True, train_crop_size=24, val_resize_size=28,
                            val_crop_size=24, input_pipeline=pipeline)


def first_batches(args, workers=0):
    loaders = data.build_data(args, 1, 0, seed=3, batch_per_process=4, workers=workers, pin_memory=False)
    return next(iter(loaders.train_loader)), next(iter(loaders.val_loader)), loaders


def test_build_data_uint8_gives_the_pil_pipelines_batches_as_uint8(tmp_path):
    make_dataset(str(tmp_path), classes=2, train_per_class=3, val_per_class=2, size=40)
    (train, train_labels), (val, val_labels), loaders = first_batches(data_args(tmp_path, "uint8"))
    assert train.dtype == val.dtype == torch.uint8
    assert train.shape == val.shape == (4, 3, 24, 24)
    (pil_train, pil_labels), (pil_val, _), _ = first_batches(data_args(tmp_path, "pil"))
    assert torch.equal(train_labels, pil_labels)
    assert (train.float() - to_levels(pil_train)).abs().max() <= 1.5  # same images, crops and flips
    assert (val.float() - to_levels(pil_val)).abs().max() <= 1.5
    assert not loaders.train_loader.persistent_workers
    (in_worker, _), _, loaders = first_batches(data_args(tmp_path, "uint8"), workers=1)
    assert torch.equal(in_worker, train) and loaders.train_loader.persistent_workers


def test_dummy_data_in_uint8():
    (train, _), (val, _), _ = first_batches(data_args(None, "uint8", dummy=8))
    assert train.dtype == val.dtype == torch.uint8 and train.shape == (4, 3, 24, 24)
    (train, _), _, _ = first_batches(data_args(None, "pil", dummy=8))
    assert train.dtype == torch.float32




def test_default_train_transforms_are_the_releases(jpeg):
    """With every option off, the PIL transform is the release's Compose and the uint8 one is the bare crop+flip,
    bitwise, at the default size and at a size given per call."""
    release = transforms.Compose([transforms.RandomResizedCrop(40), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), transforms.Normalize(presets.IMAGENET_MEAN,
                                                                              presets.IMAGENET_STD)])
    image, decoded = data.load_rgb(jpeg), data.load_uint8(jpeg)
    pil_tf, uint8_tf = presets.train_transform(40), presets.train_transform(40, "uint8")
    other_size = presets.train_transform(64)
    for seed in range(5):
        torch.manual_seed(seed)
        expected = release(image)
        torch.manual_seed(seed)
        assert torch.equal(pil_tf(image), expected)
        torch.manual_seed(seed)
        assert torch.equal(other_size(image, 40), expected)
        torch.manual_seed(seed)
        expected = presets.RandomResizedCropFlip(40)(decoded)
        torch.manual_seed(seed)
        assert torch.equal(uint8_tf(decoded), expected)


def policy_reference(name: str):
    bilinear = v2.InterpolationMode.BILINEAR
    return {"ra": v2.RandAugment(magnitude=9, interpolation=bilinear),
            "ta_wide": v2.TrivialAugmentWide(interpolation=bilinear),
            "augmix": v2.AugMix(severity=3, interpolation=bilinear),
            "imagenet": v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear)}[name]


@pytest.mark.parametrize("policy", presets.AUTO_AUGMENT_POLICIES)
def test_augment_policy_follows_the_crop_and_repeats_under_its_seed(jpeg, policy):
    image, decoded = data.load_rgb(jpeg), data.load_uint8(jpeg)
    plain_pil, plain_uint8 = presets.train_transform(32), presets.train_transform(32, "uint8")
    pil_tf = presets.train_transform(32, auto_augment=policy)
    uint8_tf = presets.train_transform(32, "uint8", auto_augment=policy)
    reference = policy_reference(policy)
    to_float = transforms.Compose([transforms.ToTensor(), transforms.Normalize(presets.IMAGENET_MEAN,
                                                                               presets.IMAGENET_STD)])
    changed = {"pil": 0, "uint8": 0}
    for seed in range(6):
        for name, tf, plain, source in (("pil", pil_tf, plain_pil, image), ("uint8", uint8_tf, plain_uint8, decoded)):
            torch.manual_seed(seed)
            ours = tf(source)
            torch.manual_seed(seed)
            assert torch.equal(tf(source), ours)  # the same seed, the same output
            torch.manual_seed(seed)
            if name == "pil":
                crop = transforms.RandomHorizontalFlip()(transforms.RandomResizedCrop(32)(source))
                expected = to_float(reference(crop))
                assert ours.dtype == torch.float32 and ours.shape == (3, 32, 32)
            else:
                expected = reference(presets.RandomResizedCropFlip(32)(source))
                assert ours.dtype == torch.uint8 and ours.shape == (3, 32, 32) and ours.is_contiguous()
            assert torch.equal(ours, expected)
            torch.manual_seed(seed)
            changed[name] += not torch.equal(ours, plain(source))
    assert changed["pil"] > 0 and changed["uint8"] > 0


def test_random_erasing_erases_the_same_box_with_the_same_meaning(jpeg):
    """At p=1 the PIL pipeline sets a box of the normalised tensor to 0; the uint8 pipeline sets the same box (the
    draws line up) to the ImageNet mean colour, which normalize_on_device turns into ~0."""
    image, decoded = data.load_rgb(jpeg), data.load_uint8(jpeg)
    pil_tf = presets.train_transform(48, random_erase=1.0)
    uint8_tf, plain = presets.train_transform(48, "uint8", random_erase=1.0), presets.train_transform(48, "uint8")
    assert presets.UINT8_MEAN == (124, 116, 104)
    for seed in range(8):
        torch.manual_seed(seed)
        pil_box = (pil_tf(image) == 0).all(0)
        torch.manual_seed(seed)
        erased = uint8_tf(decoded)
        torch.manual_seed(seed)
        uint8_box = (erased != plain(decoded)).any(0)
        assert erased.dtype == torch.uint8 and erased.is_contiguous()
        assert pil_box.sum() > 0 and torch.equal(pil_box, uint8_box)
        rows, columns = torch.nonzero(pil_box, as_tuple=True)
        assert pil_box.sum() == (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)  # a rectangle
        normalised = presets.normalize_on_device(erased[None])[0]
        assert normalised[:, uint8_box].abs().max() < 0.01
        assert torch.equal(erased[:, uint8_box], torch.tensor(presets.UINT8_MEAN, dtype=torch.uint8)[:, None]
                           .expand(3, int(uint8_box.sum())))


def test_bad_augment_options_are_refused():
    with pytest.raises(ValueError, match="augmix"):
        presets.train_transform(32, auto_augment="autoaugment")
    with pytest.raises(ValueError, match="random erasing"):
        presets.train_transform(32, random_erase=1.5)
    with pytest.raises(ValueError, match="magnitude"):
        presets.train_transform(32, auto_augment="ra", ra_magnitude=31)
    with pytest.raises(ValueError, match="severity"):
        presets.train_transform(32, "uint8", auto_augment="augmix", augmix_severity=0)


@pytest.mark.parametrize("spec, sizes", [
    ("128:224:2:5", {0: 128, 2: 128, 3: 160, 4: 192, 5: 224, 90: 224}),
    ("100:260:0:4", {0: 100, 1: 128, 2: 192, 3: 224, 4: 260}),  # 140, 180, 220 to the nearest multiple of 32
    ("32:64:0:2", {1: 64}),  # 48: a tie goes up
    ("40:60:0:4", {1: 40, 3: 60}),  # 45 rounds to 32 and 55 to 64: kept within [40, 60]
    ("224:128:0:3", {0: 224, 1: 192, 2: 160, 3: 128}),
    ("160:192:4:4", {3: 160, 4: 192}),
])
def test_train_size_schedule_closed_form(spec, sizes):
    schedule = presets.train_size_schedule(spec)
    assert {epoch: schedule(epoch) for epoch in sizes} == sizes


@pytest.mark.parametrize("spec", ["", "160:192:0", "160:192:0:4:8", "a:192:0:4", "160.5:192:0:4", "0:192:0:4",
                                  "160:-32:0:4", "160:192:-1:4", "160:192:5:4"])
def test_malformed_train_size_schedule_is_refused(spec):
    with pytest.raises(ValueError, match="expected START:END:FROM_EPOCH:TO_EPOCH") as error:
        presets.train_size_schedule(spec)
    assert "\n" not in str(error.value)


def test_normalize_on_device_is_one_affine_pass():
    """ToTensor + Normalize as x * scale + shift in one operation (the four passes cast, divide, subtract, divide
    were one each), also when the output is bf16."""
    from torch.profiler import ProfilerActivity, profile

    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    presets.normalize_on_device(batch)  # the constants, made once per device
    for dtype in (torch.float32, torch.bfloat16):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            presets.normalize_on_device(batch, torch.channels_last, dtype)
        names = [event.name for event in prof.events()]
        arithmetic = [name for name in names if name.split("::")[-1].rstrip("_") in ("div", "sub", "add", "mul",
                                                                                     "addcmul")]
        assert arithmetic == ["aten::addcmul"], names
