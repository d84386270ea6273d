"""Behaviour tests: offline, on the CPU, in well under a minute.

Each test names the bug it is there to catch. MNIST is replaced by a few hundred
synthetic digits written as IDX files, so torchvision's real loading code runs.

    python -m pytest -q
"""
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal

matplotlib.use("agg")  # tests never open a window, whatever display the machine has
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import plot_latents
import train
from vae import VAE, kl_divergence, negative_elbo, reconstruction_loss

HERE = os.path.dirname(os.path.abspath(__file__))


class SpecVAE(nn.Module):
    """The specification's class (section 4) as written: the reference for the API."""

    def __init__(self, z_dims=4, input_size=784, num_hidden=128):
        super().__init__()
        self.z_dims = z_dims
        self.input_size = input_size
        self.encoder = nn.Sequential(nn.Linear(input_size, num_hidden), nn.ReLU(),
                                     nn.Linear(num_hidden, num_hidden), nn.ReLU())
        self.mu = nn.Linear(num_hidden, z_dims)
        self.logvar = nn.Linear(num_hidden, z_dims)
        self.decoder = nn.Sequential(nn.Linear(z_dims, num_hidden), nn.ReLU(),
                                     nn.Linear(num_hidden, num_hidden), nn.ReLU(),
                                     nn.Linear(num_hidden, input_size), nn.Sigmoid())

    def forward(self, x):
        x = x.flatten(start_dim=1)
        x = self.encoder(x)
        mu = self.mu(x)
        logvar = self.logvar(x)
        std = torch.exp(0.5 * logvar)
        epsilon = torch.randn_like(std)
        z = mu + std * epsilon
        output = self.decoder(z)
        return output, mu, logvar


# ---------------------------------------------------------------- fixtures

def write_idx(path, array):
    """An IDX file as MNIST ships it: big-endian magic, sizes, then uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_digits(n, rng):
    """n 28x28 images on black: ten blocky shapes (one per label), shifted a little,
    their strokes of uneven brightness."""
    shapes = np.kron(rng.random((10, 7, 7)) > 0.7, np.ones((4, 4)))
    labels = rng.integers(0, 10, n)
    images = np.stack([np.roll(shapes[k], rng.integers(-2, 3, 2), axis=(0, 1)) for k in labels])
    return (images * rng.uniform(100, 255, images.shape)).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A data folder laid out as torchvision's MNIST expects: 320 train, 64 test."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 320), ("t10k", 64)):
        images, labels = fake_digits(n, rng)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return str(root)


@pytest.fixture(scope="session")
def digits(mnist_dir):
    return train.load_mnist(mnist_dir, train=True)


def load(path):
    return torch.load(path, weights_only=True)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_train(tmp_path, mnist_dir, *flags, out="vae.pt"):
    """train.main in this process with small, fast settings; returns the checkpoint path."""
    path = str(tmp_path / out)
    train.main(["--data-dir", mnist_dir, "--out", path, "--epochs", "2",
                "--batch-size", "32", "--device", "cpu", *flags])
    return path


def exits_with_one_line(capsys, call, code=None):
    """Run call, which must exit non-zero with one line on stderr (so no traceback).

    sys.exit("message") prints its message only at the top level, so it is read from
    the SystemExit here. Returns (that line, what went to stdout).
    """
    with pytest.raises(SystemExit) as stop:
        try:
            call()
        except KeyboardInterrupt:  # left to escape, it would end the whole test session
            pytest.fail("KeyboardInterrupt escaped: the user would see a traceback")
    assert stop.value.code not in (0, None)
    if code is not None:
        assert stop.value.code == code
    captured = capsys.readouterr()
    err = captured.err + (stop.value.code if isinstance(stop.value.code, str) else "")
    assert len(err.strip().splitlines()) == 1, err
    return err, captured.out


# ---------------------------------------------------------------- vae.py

@pytest.mark.parametrize("layout", [(5, 1, 28, 28), (5, 784)])
def test_forward_shapes_for_both_input_layouts(layout):
    # Catches: a forward that does not flatten images, or returns the wrong things.
    x_prime, mu, logvar = VAE()(torch.rand(layout))
    assert x_prime.shape == (5, 784) and mu.shape == (5, 4) and logvar.shape == (5, 4)
    x_prime, mu, logvar = VAE(z_dims=3, num_hidden=16)(torch.rand(layout))
    assert x_prime.shape == (5, 784) and mu.shape == logvar.shape == (5, 3)


def test_outputs_are_pixel_intensities():
    # Catches: a missing sigmoid (a linear readout gives values outside [0, 1]).
    torch.manual_seed(0)
    model = VAE()
    with torch.no_grad():
        model.decoder[-2].weight.mul_(50)
    x_prime, _, _ = model(torch.rand(64, 784))
    assert x_prime.min() >= 0 and x_prime.max() <= 1
    assert x_prime.min() < 0.01 and x_prime.max() > 0.99


def test_state_dict_is_the_specifications():
    # Catches: renamed or restructured layers, which would break coursework checkpoints.
    ours, spec = VAE().state_dict(), SpecVAE().state_dict()
    assert list(ours) == list(spec)
    assert all(ours[k].shape == spec[k].shape for k in ours)
    VAE().load_state_dict(spec)
    SpecVAE().load_state_dict(ours)
    model = VAE(z_dims=6, input_size=100, num_hidden=32)
    assert (model.z_dims, model.input_size) == (6, 100)


def test_forward_matches_the_specifications_for_the_same_rng():
    # Catches: any change to the sampling (order of draws, std from logvar, what is decoded).
    spec = SpecVAE()
    ours = VAE()
    ours.load_state_dict(spec.state_dict())
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(3)
    expected = spec(x)
    torch.manual_seed(3)
    for a, b in zip(ours(x), expected):
        assert torch.equal(a, b)


def test_kl_is_zero_at_the_prior():
    # Catches: constant offsets in the KL (a missing "1 +", a stray log term).
    zeros = torch.zeros(7, 4)
    assert kl_divergence(zeros, zeros).item() == 0.0


def test_kl_matches_torch_distributions():
    # Catches: a wrong sign, logvar used as a standard deviation, a mean instead of a sum.
    torch.manual_seed(0)
    mu, logvar = torch.randn(16, 4), torch.randn(16, 4)
    expected = torch.distributions.kl_divergence(
        Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum()
    assert torch.allclose(kl_divergence(mu, logvar), expected, rtol=1e-5)
    assert kl_divergence(mu, logvar) > 0


def test_reparameterize_draws_with_variance_exp_logvar():
    # Catches: no sampling (variance 0), logvar used as std (variance logvar^2),
    # exp(logvar) used as std (variance exp(2 logvar)).
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0]).expand(200_000, 2)
    logvar = torch.tensor([np.log(4.0), np.log(0.25)]).float().expand(200_000, 2)
    z = VAE(z_dims=2).reparameterize(mu, logvar)
    assert torch.allclose(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.02)
    assert torch.allclose(z.var(0), torch.tensor([4.0, 0.25]), rtol=0.02)


def test_forward_samples_in_train_mode():
    # Catches: a forward that decodes mu instead of a sample z.
    torch.manual_seed(0)
    model = VAE().train()
    x = torch.rand(4, 784)
    first, mu1, _ = model(x)
    second, mu2, _ = model(x)
    assert torch.equal(mu1, mu2)
    assert not torch.allclose(first, second)


def test_negative_elbo_is_squared_error_sum_plus_kl():
    # Catches: a mean instead of a sum, a missing or misweighted KL, BCE mixed up with MSE.
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    x_prime, mu, logvar = VAE()(x)
    flat = x.flatten(start_dim=1)
    kl = 0.5 * torch.sum(mu**2 + logvar.exp() - 1 - logvar)
    squared = ((x_prime - flat) ** 2).sum()
    bce = -(flat * x_prime.log() + (1 - flat) * (1 - x_prime).log()).sum()
    assert torch.allclose(negative_elbo(x_prime, x, mu, logvar), squared + kl)
    assert torch.allclose(negative_elbo(x_prime, x, mu, logvar, beta=0.25), squared + 0.25 * kl)
    assert torch.allclose(negative_elbo(x_prime, x, mu, logvar, recon="bce"), bce + kl)
    twice = [torch.cat([t, t]) for t in (x_prime, x, mu, logvar)]
    assert torch.allclose(negative_elbo(*twice), 2 * negative_elbo(x_prime, x, mu, logvar))
    with pytest.raises(ValueError, match="mse"):
        reconstruction_loss(x_prime, x, kind="l1")


def test_short_training_run_lowers_the_loss(digits):
    # Catches: gradients that do not reach the weights, a loss of the wrong sign.
    images, _ = digits
    torch.manual_seed(0)
    model = VAE()
    optimizer = train.make_optimizer(model, 1e-3)
    before = sum(train.evaluate(model, images)).item()
    step = train.make_step(model, optimizer)
    for _ in range(5):
        train.train_epoch(model, step, images, 32)
    after = sum(train.evaluate(model, images)).item()
    assert after < 0.8 * before


# ---------------------------------------------------------------- train.py

def test_load_mnist_scales_pixels_to_unit_interval(digits, mnist_dir):
    # Catches: pixels left in 0..255, or images not flattened.
    images, labels = digits
    assert images.shape == (320, 784) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.5
    assert labels.shape == (320,) and int(labels.max()) <= 9
    assert len(train.load_mnist(mnist_dir, train=False)[0]) == 64


def test_train_epoch_keeps_the_last_partial_batch(digits):
    # Catches: dropping the last batch, or averaging per batch instead of per image.
    images, _ = digits
    model = VAE()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(1)
    loss = train.train_epoch(model, train.make_step(model, optimizer), images, 300)
    torch.manual_seed(1)
    order = torch.randperm(320)
    expected = 0
    for batch in (order[:300], order[300:]):
        x = images[batch]
        x_prime, mu, logvar = model(x)
        expected += negative_elbo(x_prime, x, mu, logvar)
    assert torch.allclose(loss, expected / 320, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_trains_exactly_like_the_plain_step(digits):
    # Catches: a graph that replays a stale batch, reuses one z or drops an update, and
    # a returned loss that the next replay overwrites: kept in a list, every replayed
    # entry would read as the last batch's.
    images = digits[0].cuda()
    batches = [images[k:k + 48] for k in range(0, 320, 48)] * 3  # six of 48, one of 32
    runs = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = VAE().cuda()
        step = train.make_step(model, train.make_optimizer(model, 1e-3))
        if graphed:
            step = train.CUDAGraphStep(step, (48, 784))
        losses = [step(x) for x in batches]
        runs.append((torch.stack(losses), model.state_dict()))
    (plain_losses, plain), (graph_losses, graph) = runs
    assert torch.equal(plain_losses, graph_losses)
    assert same_weights(plain, graph)


def test_cli_trains_and_saves_a_state_dict(tmp_path, mnist_dir):
    # Catches: a broken command line, a checkpoint the specification's class cannot load,
    # a loss that does not fall, a temporary file left behind.
    out = tmp_path / "vae.pt"
    run = subprocess.run([sys.executable, "train.py", "--data-dir", mnist_dir, "--out", str(out),
                          "--epochs", "2", "--batch-size", "32", "--device", "cpu"],
                         cwd=HERE, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    losses = [float(v) for v in re.findall(r"train loss ([\d.]+)", run.stdout)]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert "epoch 2/2" in run.stdout and "device: cpu" in run.stdout
    assert "\r" not in run.stdout + run.stderr and "batch" not in run.stderr  # no bar frames in a log
    state = load(out)
    SpecVAE().load_state_dict(state)
    VAE().load_state_dict(state)
    assert os.listdir(tmp_path) == ["vae.pt"]


def test_same_seed_gives_identical_weights(tmp_path, mnist_dir):
    # Catches: an unseeded generator for the weights, the shuffling or z.
    states = [load(run_train(tmp_path, mnist_dir, "--seed", seed, out=f"{k}.pt"))
              for k, seed in enumerate(["5", "5", "6"])]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["mu.weight"], states[2]["mu.weight"])


def train_by_hand(images, test_images, epochs=2, batch_size=32, lr=1e-3, z_dims=4, hidden=128,
                  beta=1.0, recon="mse", seed=0):
    """What train.py's flags describe, written out from torch and vae.py alone: the
    trained model, and per epoch the figures train.py prints (train loss, test -ELBO,
    its reconstruction and KL terms)."""
    torch.manual_seed(seed)
    model = VAE(z_dims=z_dims, num_hidden=hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    figures = []
    for _ in range(epochs):
        total = 0.0
        order = torch.randperm(len(images))
        for start in range(0, len(images), batch_size):
            x = images[order[start:start + batch_size]]
            x_prime, mu, logvar = model(x)
            loss = negative_elbo(x_prime, x, mu, logvar, beta, recon)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        with torch.no_grad():  # the test -ELBO: beta 1, z from a generator seeded with 0
            mu, logvar = model.encode(test_images)
            z = model.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
            reconstruction = reconstruction_loss(model.decode(z), test_images, recon).item()
            kl = kl_divergence(mu, logvar).item()
        n = len(test_images)
        figures.append([total / len(images), (reconstruction + kl) / n, reconstruction / n, kl / n])
    return model, figures


EPOCH_LINE = re.compile(r"epoch \d+/\d+  train loss ([\d.]+)  test -ELBO ([\d.]+) "
                        r"\(recon ([\d.]+) \+ KL ([\d.]+)\)")


@pytest.mark.parametrize("flags, settings", [
    ([], {}),
    (["--epochs", "3", "--batch-size", "50", "--lr", "3e-3", "--z-dims", "3", "--hidden", "32",
      "--beta", "0.5", "--recon", "bce", "--seed", "7"],
     dict(epochs=3, batch_size=50, lr=3e-3, z_dims=3, hidden=32, beta=0.5, recon="bce", seed=7)),
])
def test_train_does_and_prints_what_its_flags_say(tmp_path, mnist_dir, capsys, flags, settings):
    # Catches: any flag ignored or misrouted (each differs from its default in the second
    # case), a wrong printed figure (train loss, test -ELBO, its split), and a main()
    # that does not return the model it saved.
    path = str(tmp_path / "vae.pt")
    returned = train.main(["--data-dir", mnist_dir, "--out", path, "--epochs", "2",
                           "--batch-size", "32", "--device", "cpu", *flags])
    images, test_images = (train.load_mnist(mnist_dir, train=split)[0] for split in (True, False))
    model, figures = train_by_hand(images, test_images, **settings)
    printed = [[float(v) for v in m.groups()] for m in EPOCH_LINE.finditer(capsys.readouterr().out)]
    np.testing.assert_allclose(printed, figures, atol=0.0051)  # printed with two decimals
    saved = load(path)
    assert same_weights(returned.state_dict(), saved)
    for k, v in model.state_dict().items():  # fused Adam against torch's default: not bitwise
        torch.testing.assert_close(saved[k], v, atol=1e-5, rtol=0)


def test_evaluation_leaves_training_alone(tmp_path, mnist_dir, digits, monkeypatch):
    # Catches: evaluation drawing z from the random state training draws from, so that
    # whether and how it runs changes the trained weights; test figures that vary
    # from one call to the next for the same weights.
    model = VAE()
    state = torch.get_rng_state()
    first = torch.stack(train.evaluate(model, digits[0]))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.stack(train.evaluate(model, digits[0])), first)

    usual = load(run_train(tmp_path, mnist_dir, out="usual.pt"))
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: real(*args, **kwargs, batch_size=7))
    assert same_weights(load(run_train(tmp_path, mnist_dir, out="small-batches.pt")), usual)


def test_adam_is_fused_only_where_the_device_has_the_kernel():
    # Catches: a fallback that never runs. The fused kernel's device check comes at the
    # first step, so a model on a device without it must get an unfused Adam up front.
    fused = train.make_optimizer(VAE(), 1e-3)
    assert fused.defaults["fused"] and not fused.defaults["capturable"]
    assert not train.make_optimizer(VAE().to("meta"), 1e-3).defaults["fused"]


def test_pick_device_honours_the_choice(monkeypatch):
    # Catches: --device ignored, or auto preferring the CPU over a GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.pick_device("auto").type == "cuda"
    assert train.pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert train.pick_device("auto").type == "mps"


@pytest.mark.parametrize("flags", [
    ["--epochs", "0"], ["--batch-size", "-1"], ["--z-dims", "0"], ["--hidden", "0"],
    ["--lr", "nan"], ["--lr", "0"], ["--lr", "inf"], ["--beta", "-1"], ["--epochs", "two"],
    ["--recon", "l1"], ["--device", "tpu"],
])
def test_bad_flags_are_refused(tmp_path, mnist_dir, capsys, flags):
    # Catches: a nonsense setting that would train quietly, or fail with a traceback.
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, mnist_dir, *flags), code=2)
    assert flags[0] in err
    assert not (tmp_path / "vae.pt").exists()


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_an_absent_device_is_refused(tmp_path, mnist_dir, capsys, device):
    # Catches: a silent fall back to the CPU, or a CUDA error with a traceback.
    if train.pick_device("auto").type == device:
        pytest.skip(f"this machine has {device}")
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, mnist_dir, "--device", device))
    assert f"--device {device}" in err and "--device cpu" in err


def test_out_in_a_missing_folder_is_refused_before_training(tmp_path, mnist_dir, capsys):
    # Catches: ten epochs of training lost to a checkpoint that cannot be written.
    err, out = exits_with_one_line(
        capsys, lambda: run_train(tmp_path, mnist_dir, out="missing/vae.pt"))
    assert str(tmp_path / "missing") in err
    assert "epoch" not in out


def test_missing_mnist_says_where_to_put_it(tmp_path, capsys, monkeypatch):
    # Catches: torchvision's download traceback instead of a fix. No mirrors: no network.
    monkeypatch.setattr(train.datasets.MNIST, "mirrors", [])
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, str(tmp_path / "nodata")))
    assert os.path.join(str(tmp_path / "nodata"), "MNIST", "raw") in err
    assert "train-images-idx3-ubyte" in err


def interrupt(*args, **kwargs):
    """Stands for Ctrl-C landing in whatever it replaces."""
    raise KeyboardInterrupt


def on_second_call(monkeypatch, name, instead):
    """Make the second call of train.<name> run instead(real, *args, **kwargs)."""
    real, calls = getattr(train, name), []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            return instead(real, *args, **kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(train, name, patched)


def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path, mnist_dir, capsys, monkeypatch):
    # Catches: a NaN model written over good weights, or training on after a NaN.
    good = load(run_train(tmp_path, mnist_dir, "--epochs", "1", out="good.pt"))
    capsys.readouterr()
    on_second_call(monkeypatch, "train_epoch",
                   lambda real, *args, **kwargs: real(*args, **kwargs) * float("nan"))
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, mnist_dir))
    assert "epoch 2" in err and "--lr" in err
    kept = load(tmp_path / "vae.pt")
    assert all(torch.equal(kept[k], good[k]) for k in good)


@pytest.mark.parametrize("where", ["train_epoch", "save_checkpoint"])
def test_ctrl_c_keeps_the_last_checkpoint(tmp_path, mnist_dir, capsys, monkeypatch, where):
    # Catches: a traceback on Ctrl-C, or a message that misstates what was saved,
    # whether the interrupt comes while training or while saving.
    on_second_call(monkeypatch, where, interrupt)
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, mnist_dir), code=130)
    assert "interrupted in epoch 2" in err and "holds epoch 1" in err
    VAE().load_state_dict(load(tmp_path / "vae.pt"))


def test_an_interrupted_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    # Catches: writing the checkpoint in place, where a kill mid-write corrupts it.
    path = tmp_path / "vae.pt"
    old = VAE()
    train.save_checkpoint(old, str(path))

    def half_written(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt
    monkeypatch.setattr(train.torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(VAE(), str(path))
    kept = load(path)
    assert all(torch.equal(kept[k], v) for k, v in old.state_dict().items())
    assert os.listdir(tmp_path) == ["vae.pt"]


@pytest.mark.parametrize("where", ["pick_device", "load_mnist"])
def test_ctrl_c_before_the_first_epoch_says_so(tmp_path, mnist_dir, capsys, monkeypatch, where):
    # Catches: an empty line instead of the message when Ctrl-C lands while CUDA starts
    # or MNIST loads.
    monkeypatch.setattr(train, where, interrupt)
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, mnist_dir), code=130)
    assert "interrupted before training began; nothing was saved to" in err


def test_two_runs_saving_to_one_path_keep_their_temporary_files_apart(tmp_path, monkeypatch):
    # Catches: one fixed temporary name, which a second run saving to the same --out
    # truncates, renames away or deletes while the first is still writing it.
    path = str(tmp_path / "vae.pt")
    mine, theirs = VAE(), VAE()
    real_save = torch.save

    def meanwhile_another_run_saves(obj, f):
        monkeypatch.setattr(train.torch, "save", real_save)
        train.save_checkpoint(theirs, path)
        real_save(obj, f)
    monkeypatch.setattr(train.torch, "save", meanwhile_another_run_saves)
    train.save_checkpoint(mine, path)
    assert same_weights(load(path), mine.state_dict())
    assert os.listdir(tmp_path) == ["vae.pt"]


@pytest.mark.skipif(os.name != "posix", reason="a folder can be synced on POSIX only")
def test_the_checkpoint_and_its_rename_reach_the_disk(tmp_path, monkeypatch):
    # Catches: a rename that a power cut can undo, handing back the previous epoch: the
    # file is synced before it replaces the old one, and the folder after.
    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(*args):
        events.append("replace")
        real_replace(*args)

    def fsync(fd):
        events.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    train.save_checkpoint(VAE(), str(tmp_path / "vae.pt"))
    assert events == ["file", "replace", "folder"]


def run_into_closed_pipe(*command):
    """Run a script with stdout the writing end of a pipe whose reader has gone, as
    after `| head`, and stdout buffered, as Python buffers a pipe by default."""
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        return subprocess.run([sys.executable, *command], cwd=HERE, stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, env=env)
    finally:
        os.close(write)


def test_train_stops_in_one_line_when_its_output_is_closed(tmp_path, mnist_dir):
    # Catches: a BrokenPipeError traceback under `| head`, and a stop that hides what
    # was saved.
    out = tmp_path / "vae.pt"
    run = run_into_closed_pipe("train.py", "--data-dir", mnist_dir, "--out", str(out), "--device", "cpu")
    assert run.returncode == 1
    assert run.stderr == f"train.py: output closed before training began; nothing was saved to {out}\n"


class KernelStream(io.StringIO):
    """Stands for stdout or stderr in a Jupyter kernel: ipykernel's OutStream, no terminal."""


KernelStream.__module__ = "ipykernel.iostream"


class TerminalStream(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stdout, stderr, bar", [
    (KernelStream(), KernelStream(), "stdout"),  # Jupyter: beside the epoch lines
    (io.StringIO(), TerminalStream(), "stderr"),  # a terminal, stdout redirected or not
    (TerminalStream(), TerminalStream(), "stderr"),
    (TerminalStream(), io.StringIO(), None),  # a log: no frames in it
    (io.StringIO(), io.StringIO(), None),
    (io.StringIO(), None, None),  # pythonw: no stderr at all
])
def test_progress_bar_shows_in_a_terminal_and_a_notebook_only(digits, monkeypatch, stdout, stderr, bar):
    # Catches: a bar that a notebook hides (tqdm's own test is isatty, false in a kernel),
    # or one whose frames fill a log file or CI's output.
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    model = VAE()
    train.train_epoch(model, train.make_step(model, train.make_optimizer(model, 1e-3)), digits[0])
    shown = [name for name, stream in (("stdout", stdout), ("stderr", stderr))
             if stream is not None and "batch" in stream.getvalue()]
    assert shown == ([bar] if bar else [])


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bar_reaches_a_terminal(tmp_path, mnist_dir):
    # Catches: a bar switched off for good, so a long epoch looks frozen.
    import fcntl
    import pty
    import termios
    terminal, child_end = pty.openpty()
    # 24 rows of 80 columns, as a terminal window has: tqdm fits its bar to the width.
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    run = subprocess.run([sys.executable, "train.py", "--data-dir", mnist_dir,
                          "--out", str(tmp_path / "vae.pt"), "--epochs", "1", "--device", "cpu"],
                         cwd=HERE, stdout=subprocess.PIPE, stderr=child_end, timeout=120)
    os.close(child_end)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # Linux: the other end has closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    assert run.returncode == 0
    assert b"batch" in shown and b"\r" in shown
    assert b"epoch 1/1" in run.stdout


def test_messages_name_the_script_when_called_from_a_notebook(tmp_path, capsys, monkeypatch):
    # Catches: messages that name ipykernel_launcher.py, argparse's guess from sys.argv.
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "kernel.json"])
    err, _ = exits_with_one_line(capsys, lambda: train.main(["--epochs", "0"]), code=2)
    assert err.startswith("train.py: error: argument --epochs")
    err, _ = exits_with_one_line(capsys, lambda: plot_latents.main(["--n", "0"]), code=2)
    assert err.startswith("plot_latents.py: error: argument --n")
    err, _ = exits_with_one_line(capsys, lambda: plot_latents.main(
        ["--checkpoint", str(tmp_path / "none.pt")]))
    assert err.startswith("plot_latents.py: error: no checkpoint")


# ---------------------------------------------------------------- plot_latents.py

def picture(ax):
    return np.asarray(ax.images[0].get_array())


def tiles(grid, side=28):
    """A picture cut back into its tiles, row-major: (rows * cols, side, side)."""
    rows, cols = grid.shape[0] // side, grid.shape[1] // side
    return grid.reshape(rows, side, cols, side).transpose(0, 2, 1, 3).reshape(-1, side, side)


def test_grid_tile_at_row_r_column_c_decodes_x_c_and_y_reversed():
    # Catches: a flipped or transposed grid, i and j swapped, other dimensions not 0,
    # ticks that do not read in z units.
    torch.manual_seed(0)
    model = VAE(z_dims=3, num_hidden=16)
    n, limit, i, j = 4, 1.5, 2, 0
    ax = plot_latents.plot_latents(model, i=i, j=j, n=n, limit=limit)
    grid = picture(ax)
    values = np.linspace(-limit, limit, n)
    assert grid.shape == (28 * n, 28 * n)
    for r in range(n):
        for c in range(n):
            z = torch.zeros(1, 3)
            z[0, i], z[0, j] = values[c], values[n - 1 - r]
            expected = model.decoder(z).detach().reshape(28, 28).numpy()
            tile = grid[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28]
            np.testing.assert_allclose(tile, expected, atol=1e-6)
    half = limit / (n - 1)  # each tile's centre sits at its z value
    np.testing.assert_allclose(ax.images[0].get_extent(), [-limit - half, limit + half] * 2)
    assert ax.get_xlabel() == "Latent dimension 2"
    assert ax.get_ylabel() == "Latent dimension 0"
    plt.close("all")


def test_samples_are_the_seeded_prior_draws_decoded_row_major():
    # Catches: samples not decoded from the seeded z ~ N(0, I) (a fixed z, the global
    # random state, codes of real images), tiles column-major or flipped, grey levels
    # rescaled.
    torch.manual_seed(0)
    model = VAE(z_dims=3, num_hidden=16)
    n, seed = 3, 5
    ax = plot_latents.plot_samples(model, n=n, seed=seed)
    z = torch.randn(n * n, 3, generator=torch.Generator().manual_seed(seed))
    expected = model.decoder(z).detach().reshape(n * n, 28, 28).numpy()
    assert picture(ax).shape == (28 * n, 28 * n)
    np.testing.assert_allclose(tiles(picture(ax)), expected, atol=1e-6)
    assert ax.images[0].get_clim() == (0, 1) and ax.images[0].get_cmap().name == "gray"
    assert "N(0, I)" in ax.get_title()
    torch.manual_seed(1)  # the global random state must not matter; the seed must
    assert np.array_equal(picture(plot_latents.plot_samples(model, n=n, seed=seed)), picture(ax))
    assert not np.array_equal(picture(plot_latents.plot_samples(model, n=n, seed=seed + 1)), picture(ax))
    plt.close("all")


def test_reconstructions_are_the_images_over_decode_of_mu():
    # Catches: reconstructions decoded from a sampled z (another picture on each call),
    # the rows swapped or unlabelled, images other than the first n, a layout refused.
    torch.manual_seed(0)
    model = VAE(z_dims=3, num_hidden=16)
    images = torch.rand(12, 1, 28, 28)
    n = 5
    ax = plot_latents.plot_reconstructions(model, images, n=n)
    grid = picture(ax)
    assert grid.shape == (2 * 28, n * 28)
    x = images[:n].reshape(n, 784)
    expected = model.decoder(model.mu(model.encoder(x))).detach().reshape(n, 28, 28).numpy()
    np.testing.assert_array_equal(tiles(grid)[:n], images[:n, 0].numpy())
    np.testing.assert_allclose(tiles(grid)[n:], expected, atol=1e-6)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["image", "decode(mu)"]
    flat = plot_latents.plot_reconstructions(model, images.reshape(12, 784), n=n)
    assert np.array_equal(picture(flat), grid)
    plt.close("all")


@pytest.mark.parametrize("images, n, message", [
    (torch.rand(8, 784) * 255, 5, "divide"),
    (torch.rand(8, 784) - 0.5, 5, "[0, 1]"),
    (torch.rand(8, 784), 9, "1 <= n <= 8"),
])
def test_reconstructions_refuse_what_the_model_was_not_trained_on(images, n, message):
    # Catches: pixels of 0 to 255 passed as they are, drawn as a plausible but wrong picture.
    with pytest.raises(ValueError, match=re.escape(message)):
        plot_latents.plot_reconstructions(VAE(), images, n=n)


class SpecParts(nn.Module):
    """Only what the specification's class has: encoder, mu, decoder, z_dims."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.mu, self.decoder, self.z_dims = model.encoder, model.mu, model.decoder, model.z_dims


PLOTS = {
    "plot_latents": lambda model, ax: plot_latents.plot_latents(model, ax=ax),
    "plot_samples": lambda model, ax: plot_latents.plot_samples(model, ax=ax),
    "plot_reconstructions": lambda model, ax: plot_latents.plot_reconstructions(
        model, torch.rand(10, 784), ax=ax),
    "plot_posterior_means": lambda model, ax: plot_latents.plot_posterior_means(
        torch.randn(50, 4), torch.randint(0, 10, (50,)), ax=ax),
}


@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_draws_one_figure_and_returns_its_axes(name, monkeypatch):
    # Catches: two pictures per call in Jupyter (a returned Figure is shown again beside
    # the one the inline backend shows), an ax that is ignored, a plt.show() that
    # empties the figure before a notebook user can save it, and a model that needs
    # more than the specification's attributes.
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: pytest.fail("plt.show() was called"))
    model = SpecParts(VAE())
    before = set(plt.get_fignums())
    ax = PLOTS[name](model, None)
    assert isinstance(ax, Axes)
    assert set(plt.get_fignums()) - before == {ax.figure.number}
    plt.close(ax.figure)
    given = Figure().add_subplot()
    assert PLOTS[name](model, given) is given and (given.images or given.collections)
    assert set(plt.get_fignums()) == before


@pytest.fixture
def small_checkpoint(tmp_path):
    """A checkpoint of a non-default size, as train.py --z-dims 3 --hidden 32 writes it."""
    path = tmp_path / "small.pt"
    torch.manual_seed(0)
    train.save_checkpoint(VAE(z_dims=3, num_hidden=32), str(path))
    return str(path)


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_latents.main draws, caught as it makes them."""
    figures = []

    class Caught(Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            figures.append(self)
    monkeypatch.setattr(plot_latents, "Figure", Caught)
    return figures


def plot_cli(tmp_path, checkpoint, *flags):
    """plot_latents.main in tmp_path, leaving pyplot alone; returns the PNGs written there."""
    backend = matplotlib.get_backend()
    figures = plt.get_fignums()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        plot_latents.main(["--checkpoint", checkpoint, *flags])
    finally:
        os.chdir(cwd)
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures
    return sorted(p.name for p in tmp_path.glob("*.png"))


def test_a_state_dict_in_another_order_loads(tmp_path):
    # Catches: a check that compares the keys' order, not the keys.
    state = VAE(z_dims=3, num_hidden=32).state_dict()
    path = str(tmp_path / "reversed.pt")
    torch.save(dict(reversed(state.items())), path)
    assert same_weights(plot_latents.load_model(path).state_dict(), state)


def test_cli_grid_takes_its_flags(tmp_path, small_checkpoint, drawn, monkeypatch):
    # Catches: --i, --j, --n or --limit not reaching the grid, a default name that ignores
    # the dimensions, a switch of the session's backend, sizes assumed not read.
    monkeypatch.setattr(plt, "switch_backend", lambda *args: pytest.fail("backend switched"))
    flags = ["--i", "2", "--j", "0", "--n", "3", "--limit", "1.5"]
    assert plot_cli(tmp_path, small_checkpoint, *flags) == ["latents_2_0.png"]
    assert (tmp_path / "latents_2_0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    expected = plot_latents.plot_latents(plot_latents.load_model(small_checkpoint), 2, 0, 3, 1.5)
    assert np.array_equal(picture(drawn[0].axes[0]), picture(expected))
    assert drawn[0].axes[0].images[0].get_extent() == expected.images[0].get_extent()
    plt.close("all")


def parse_table(out):
    """The rows of the --scatter table: dim, Var[mu], E[sigma^2], Var[z], KL."""
    return np.array([[float(v) for v in line.split()]
                     for line in out.splitlines() if re.fullmatch(r"\s+\d+(\s+[\d.]+){4}", line)])


def test_cli_scatter_plots_and_prints_the_posterior(tmp_path, small_checkpoint, mnist_dir, drawn, capsys):
    # Catches: mu_i and mu_j on the wrong axes, a table column computed wrongly, a KL
    # column that does not add up to the test KL train.py prints, a name shared with
    # the plain grid.
    assert plot_cli(tmp_path, small_checkpoint, "--scatter", "--i", "2", "--j", "1", "--limit", "1.5",
                    "--data-dir", mnist_dir) == ["scatter_2_1.png"]
    model = plot_latents.load_model(small_checkpoint)
    images, labels = train.load_mnist(mnist_dir, train=False)
    with torch.no_grad():
        mu, logvar = model.encode(images)
    grid, scatter = drawn[0].axes[:2]
    assert grid.get_xlabel() == "Latent dimension 2" and grid.images[0].get_extent()[1] > 1.5
    np.testing.assert_allclose(scatter.collections[0].get_offsets(), mu[:, [2, 1]].numpy(), atol=1e-6)
    np.testing.assert_array_equal(scatter.collections[0].get_array(), labels.numpy())

    out = capsys.readouterr().out
    table = parse_table(out)
    var_mu, mean_var = mu.var(0, correction=0).numpy(), logvar.exp().mean(0).numpy()
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean(0).numpy()
    np.testing.assert_array_equal(table[:, 0], [0, 1, 2])
    np.testing.assert_allclose(table[:, 1:], np.stack([var_mu, mean_var, var_mu + mean_var, kl], 1),
                               atol=0.0006)
    total = float(re.search(r"KL per image ([\d.]+)", out).group(1))
    assert total == pytest.approx(train.evaluate(model, images)[1].item(), abs=0.006)
    assert total == pytest.approx(table[:, 4].sum(), abs=0.006)
    plt.close("all")


def test_cli_samples_draws_the_prior_and_the_reconstructions(tmp_path, small_checkpoint, mnist_dir,
                                                            drawn, capsys):
    # Catches: --n or --seed not reaching the samples, reconstructions of the wrong images,
    # a wrong error figure, a default name that overwrites another view's PNG.
    assert plot_cli(tmp_path, small_checkpoint, "--samples", "--n", "3", "--seed", "4",
                    "--data-dir", mnist_dir) == ["samples.png"]
    model = plot_latents.load_model(small_checkpoint)
    images, _ = train.load_mnist(mnist_dir, train=False)
    samples, reconstructions = drawn[0].axes
    assert np.array_equal(picture(samples), picture(plot_latents.plot_samples(model, n=3, seed=4)))
    assert np.array_equal(picture(reconstructions),
                          picture(plot_latents.plot_reconstructions(model, images, n=10)))
    with torch.no_grad():
        error = ((model.decode(model.encode(images)[0]) - images) ** 2).sum().item() / len(images)
    printed = float(re.search(r"squared error of ([\d.]+) per image", capsys.readouterr().out).group(1))
    assert printed == pytest.approx(error, abs=0.006)
    assert plot_cli(tmp_path, small_checkpoint, "--samples", "--data-dir", mnist_dir,
                    "--out", "mine.png") == ["mine.png", "samples.png"]
    plt.close("all")


def test_cli_show_without_a_display_says_so(tmp_path, small_checkpoint, capsys):
    # Catches: --show ignored, or a figure left open where no window can show it.
    figures = plt.get_fignums()
    plot_latents.main(["--checkpoint", small_checkpoint, "--out", str(tmp_path / "grid.png"), "--show"])
    assert "no display here to --show on" in capsys.readouterr().out
    assert (tmp_path / "grid.png").exists() and plt.get_fignums() == figures


class RunsCode:
    """A pickle that would create a file when loaded with weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("case, flags, message", [
    ("good", ["--i", "1", "--j", "1"], "two different"),
    ("good", ["--i", "3"], "0 to 2"),
    ("good", ["--j", "-1"], "0 to 2"),
    ("good", ["--n", "0"], "--n"),
    ("good", ["--limit", "0"], "--limit"),
    ("good", ["--limit", "nan"], "--limit"),
    ("good", ["--scatter", "--samples"], "not allowed with"),
    ("missing", [], "python train.py"),
    ("folder", [], "is a folder"),
    ("random bytes", [], "loads safely"),
    ("other model", [], "holds 2 entries (weight, bias) and lacks encoder.0.weight, encoder.0.bias and 12 more"),
    ("extra entry", [], "holds entries a VAE has not: step"),
    ("not a tensor", [], "some of its entries are not tensors"),
    ("runs code", [], "loads safely"),
])
def test_plot_bad_inputs_are_refused(tmp_path, small_checkpoint, capsys, case, flags, message):
    # Catches: plotting a nonsense pair, negative indices read from the end, a traceback,
    # a message too long to read, and above all a checkpoint that runs code when loaded.
    path = {"good": small_checkpoint, "missing": str(tmp_path / "none.pt"), "folder": str(tmp_path)}.get(
        case, str(tmp_path / "bad.pt"))
    marker = tmp_path / "code-ran"
    if case == "random bytes":
        (tmp_path / "bad.pt").write_bytes(os.urandom(1000))
    elif case == "other model":
        torch.save(nn.Linear(3, 2).state_dict(), path)
    elif case == "extra entry":
        torch.save({**VAE().state_dict(), "step": torch.tensor(3)}, path)
    elif case == "not a tensor":
        torch.save({**VAE().state_dict(), "mu.bias": [0.0] * 4}, path)
    elif case == "runs code":
        torch.save({"mu.weight": RunsCode(str(marker))}, path)
    err, _ = exits_with_one_line(capsys, lambda: plot_latents.main(
        ["--checkpoint", path, "--out", str(tmp_path / "x.png"), *flags]))
    assert message in err and len(err.replace(path, "")) < 200
    assert not marker.exists()
    assert not (tmp_path / "x.png").exists()


def test_plot_ctrl_c_ends_in_one_line(small_checkpoint, capsys, monkeypatch):
    # Catches: a traceback when Ctrl-C lands while MNIST or the checkpoint loads.
    monkeypatch.setattr(plot_latents, "load_mnist", interrupt)
    err, _ = exits_with_one_line(capsys, lambda: plot_latents.main(
        ["--checkpoint", small_checkpoint, "--samples"]), code=130)
    assert "interrupted" in err


def test_plot_cli_error_is_one_line_without_traceback(tmp_path):
    # Catches: exceptions escaping the real command line.
    run = subprocess.run([sys.executable, "plot_latents.py", "--checkpoint", str(tmp_path / "no.pt")],
                         cwd=HERE, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and "python train.py" in run.stderr


def test_plot_stops_quietly_when_its_output_is_closed(tmp_path, small_checkpoint):
    # Catches: a BrokenPipeError traceback under `| head`.
    run = run_into_closed_pipe("plot_latents.py", "--checkpoint", small_checkpoint,
                               "--out", str(tmp_path / "grid.png"))
    assert run.returncode == 1 and run.stderr == ""
    assert (tmp_path / "grid.png").exists()


# ---------------------------------------------------------------- README.md

@pytest.fixture
def notebook_folder(tmp_path, mnist_dir, monkeypatch):
    """A folder as a student's notebook sees it: the data in data/, the scripts importable."""
    shutil.copytree(mnist_dir, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_python_blocks_run_and_the_hand_loop_reproduces_train_py(notebook_folder, capsys):
    # Catches: a README whose notebook code has drifted from the code, and a training
    # loop by hand that, with train.py's seed, does not give train.py's weights.
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"^```python\n(.*?)^```", f.read(), re.M | re.S)
    assert len(blocks) >= 5
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    plt.close("all")
    assert "epoch 3  train loss" in capsys.readouterr().out
    by_main = train.main(["--epochs", "3", "--device", "cpu", "--out", "check.pt"])
    assert same_weights(namespace["model"].state_dict(), by_main.state_dict())


KERNEL_CELLS = [  # a notebook's cells, and how many pictures each must show
    ("import matplotlib.pyplot as plt\nimport train, plot_latents\n"
     "model = train.main(['--epochs', '1', '--device', 'cpu'])\n"
     "images, labels = train.load_mnist('data', train=False)", 0),
    ("plot_latents.plot_samples(model)", 1),
    ("ax = plot_latents.plot_reconstructions(model, images)", 1),
    ("plot_latents.plot_latents(model)\nplt.show()", 1),
    ("fig, (left, right) = plt.subplots(1, 2)\nplot_latents.plot_samples(model, ax=left)\n"
     "plot_latents.plot_posterior_means(plot_latents.posterior_stats(model, images)[0], labels, ax=right)", 1),
    ("plot_latents.main(['--samples'])", 0),
    ("plot_latents.plot_samples(model)", 1),
    ("import matplotlib\nprint(matplotlib.get_backend())", 0),
]


def test_in_a_real_jupyter_kernel_each_call_shows_one_picture(notebook_folder):
    # Catches, where nbclient and ipykernel are installed (they are not requirements):
    # a figure shown twice or not at all, a main() that switches the session's backend,
    # and a progress bar a notebook hides.
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    sources = [f"import sys\nsys.path.insert(0, {HERE!r})"] + [source for source, _ in KERNEL_CELLS]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in sources])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook_folder)}}).execute()
    cells = notebook.cells[1:]
    shown = [sum("image/png" in output.get("data", {}) for output in cell.outputs) for cell in cells]
    assert shown == [pictures for _, pictures in KERNEL_CELLS]
    assert any(o.get("name") == "stdout" and "batch" in o.text for o in cells[0].outputs)  # the bar
    assert "inline" in cells[-1].outputs[0].text
