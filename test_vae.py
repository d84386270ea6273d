"""Behaviour tests, offline and on the CPU: each names the bug it is there to catch.

MNIST is replaced by a few hundred synthetic digits written as IDX files, so that torchvision's
real loading code runs. The tests run on one thread, but for those about threads, so that a busy
machine cannot stretch them. Run them with: python -m pytest -q
"""

import csv
import functools
import gzip
import inspect
import io
import itertools
import math
import os
import pickle
import re
import runpy
import shlex
import shutil
import sys
import weakref

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from torch.distributions import Bernoulli, Normal
from torchvision import datasets
from tqdm import tqdm

import plot_latents  # it imports train first, which sets MKL's reproducible mode for the suite
import train
import vae
from vae import VAE, encode, iwae_bound, kl_divergence, log_likelihood, negative_elbo

matplotlib.use("agg")  # tests never open a window, whatever display the machine has
HERE = os.path.dirname(os.path.abspath(__file__))
HISTORY_COLUMNS = ["epoch", "train_loss", "train_recon", "train_kl", "test_nelbo", "test_recon"]
HISTORY_COLUMNS += ["test_kl", "seconds", "nats_left_out", "binarized"]  # then train.py's "dataset"


class SpecVAE(nn.Module):
    """The specification's class (section 4) as a student copies it: the reference for the API."""

    def __init__(self, z_dims=4, input_size=784, num_hidden=128):
        super().__init__()
        self.z_dims = z_dims
        self.input_size = input_size
        self.encoder = nn.Sequential(
            nn.Linear(input_size, num_hidden),
            nn.ReLU(),
            nn.Linear(num_hidden, num_hidden),
            nn.ReLU(),
        )
        self.mu = nn.Linear(num_hidden, z_dims)
        self.logvar = nn.Linear(num_hidden, z_dims)
        self.decoder = nn.Sequential(
            nn.Linear(z_dims, num_hidden),
            nn.ReLU(),
            nn.Linear(num_hidden, num_hidden),
            nn.ReLU(),
            nn.Linear(num_hidden, input_size),
            nn.Sigmoid(),
        )

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


class OwnVAE(nn.Module):
    """A student's own VAE: the four parts, but no z_dims or input_size."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 32), nn.ReLU())
        self.mu = nn.Linear(32, 3)
        self.logvar = nn.Linear(32, 3)
        self.decoder = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 784), nn.Sigmoid())

    def forward(self, x):
        mu, logvar = encode(self, x)
        return self.decoder(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)), mu, logvar


class FlattenVAE(OwnVAE):
    """Another: its encoder begins with nn.Flatten, its decoder ends with nn.Unflatten."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU())
        self.decoder.append(nn.Unflatten(1, (1, 28, 28)))


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(autouse=True)
def one_thread_and_no_figures():
    torch.set_num_threads(1)
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """MNIST/raw and FashionMNIST/raw: 320 train and 64 test images of ten blocky shapes."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for folder in ("MNIST", "FashionMNIST"):
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        shapes = np.kron(rng.random((10, 7, 7)) > 0.7, np.ones((4, 4)))
        for prefix, n in (("train", 320), ("t10k", 64)):
            labels = rng.integers(0, 10, n)
            images = np.stack([np.roll(shapes[k], rng.integers(-2, 3, 2), (0, 1)) for k in labels])
            brightness = rng.uniform(100, 255, images.shape)
            for name, array in (("images-idx3", images * brightness), ("labels-idx1", labels)):
                sizes = b"".join(n.to_bytes(4, "big") for n in array.shape)  # IDX: big-endian
                data = bytes([0, 0, 0x08, array.ndim]) + sizes + array.astype(np.uint8).tobytes()
                (raw / f"{prefix}-{name}-ubyte").write_bytes(data)
    return str(root)


@pytest.fixture(scope="session")
def digits(mnist_dir):
    return train.load_mnist(mnist_dir, train=True)


@pytest.fixture(scope="session")
def test_set(mnist_dir):
    return train.load_mnist(mnist_dir, train=False)


def load(path):
    return torch.load(path, weights_only=True)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def history(path):
    return list(csv.DictReader(open(path, newline="")))


def figures(rows):
    """A history's figures, all but the seconds, which differ from run to run."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def small_vae(z_dims=3, hidden=16):
    """A seeded, untrained VAE, small enough to draw quickly."""
    torch.manual_seed(0)
    return VAE(z_dims=z_dims, num_hidden=hidden)


FAST = ["--epochs", "2", "--batch-size", "32", "--device", "cpu", "--threads", "1"]


def run_train(tmp_path, mnist_dir, *flags, out="vae.pt"):
    """train.main in this process with small, fast settings; returns the checkpoint's path."""
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path / out), *FAST, *flags])
    return str(tmp_path / out)


def at_vae_pt(tmp_path, mnist_dir, *flags):
    """train.py's flags for the run at tmp_path/vae.pt on the test data."""
    return ["--data-dir", mnist_dir, "--out", str(tmp_path / "vae.pt"), *flags]


@pytest.fixture
def terminal(monkeypatch, capsys):
    """terminal(script, *flags): (exit status, stdout, stderr) of the script run in this process."""

    def run(script, *flags):
        monkeypatch.setattr(sys, "argv", [script, *flags])
        code = 0
        try:
            runpy.run_path(os.path.join(HERE, script), run_name="__main__")
        except SystemExit as stop:
            code = stop.code
            if isinstance(code, str):  # sys.exit("message") prints it and exits with 1
                print(code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:  # left to escape, it would end the whole test session
            pytest.fail("KeyboardInterrupt escaped: the user would see a traceback")
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return code or 0, captured.out, captured.err

    return run


def refused(terminal, script, *flags, code=1):
    """The last line of stderr, once the script has failed with that status, saying one line."""
    status, _, err = terminal(script, *flags)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith((" ", "usage:"))]
    assert status == code and len(said) == 1, err
    return lines[-1]


def on_call(monkeypatch, owner, name, number, instead):
    """Make call number `number` of owner.name run instead(real, *args, **kwargs)."""
    real = getattr(owner, name)
    calls = []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            return instead(real, *args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)


def interrupt(*args, **kwargs):
    """Ctrl-C, landing in whatever this replaces."""
    raise KeyboardInterrupt


def threads_set(monkeypatch, cpus=2):
    """That many CPUs, and the list of counts torch.set_num_threads is given from now on."""
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    counts = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: counts.append(n) or real(n))
    return counts


def picture(ax):
    return np.asarray(ax.images[0].get_array())


def assert_same_picture(ax, expected):
    """ax shows expected's picture, over the same extent."""
    np.testing.assert_array_equal(picture(ax), picture(expected))
    assert ax.images[0].get_extent() == expected.images[0].get_extent()


def title(ax):
    """The title as one line, however it was wrapped to fit."""
    return " ".join(ax.get_title().split())


def texts(artists):
    return [artist.get_text() for artist in artists]


def tiles(grid, side=28):
    """A picture cut back into its tiles, row-major: (rows * cols, side, side)."""
    rows = grid.shape[0] // side
    return grid.reshape(rows, side, -1, side).transpose(0, 2, 1, 3).reshape(-1, side, side)


def save_run(model, path, rows=()):
    """A checkpoint as train.py writes it, and beside it a history of the rows (dicts) given."""
    torch.save(model.state_dict(), path)
    with open(train.beside(str(path), ".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, rows[0].keys() if rows else HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


# ---------------------------------------------------------------- the design card's three checks
@pytest.mark.parametrize("layout", [(5, 1, 28, 28), (5, 784)], ids=["images", "flat"])
def test_forward_shapes_for_both_input_layouts(layout):
    # Catches: a forward that does not flatten images, ignores z_dims, or returns the wrong things.
    shapes = [tuple(t.shape) for t in VAE(z_dims=3)(torch.rand(layout))]
    assert shapes == [(5, 784), (5, 3), (5, 3)]


def test_kl_is_zero_at_the_prior():
    # Catches: constant offsets in the KL (a missing "1 +", a stray log term).
    assert kl_divergence(torch.zeros(7, 4), torch.zeros(7, 4)).item() == 0.0


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layout", [(8, 1, 28, 28), (8, 784)], ids=["images", "flat"])
def test_forward_is_the_specifications_in_values_and_gradients(mode, layout):
    # Catches: renamed layers, no sigmoid, any change to sampling (mu in eval mode), a detached z.
    spec = SpecVAE()
    ours = VAE()
    ours.load_state_dict(spec.state_dict())
    spec.load_state_dict(ours.state_dict())
    x = torch.rand(layout)
    runs = []
    for model in (spec, ours):
        getattr(model, mode)()
        torch.manual_seed(3)
        outputs = model(x)
        negative_elbo(*outputs[:1], x, *outputs[1:]).backward()
        runs.append([*outputs, *(p.grad for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    torch.testing.assert_close(ours.encode(x), encode(spec, x))  # the methods kept for coursework
    assert torch.equal(ours.decode(runs[1][1]), ours.decoder(runs[1][1]))
    assert VAE(z_dims=6, input_size=100).z_dims == 6
    assert VAE(input_size=100).input_size == 100


def test_negative_elbo_is_squared_error_sum_plus_kl():
    # Catches: a mean for a sum, a wrong, missing or misweighted KL, BCE mixed up with MSE.
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    x_prime, mu, logvar = VAE()(x)
    flat = x.flatten(start_dim=1)
    q = Normal(mu, torch.exp(0.5 * logvar))
    kl = torch.distributions.kl_divergence(q, Normal(0.0, 1.0)).sum()
    squared = ((x_prime - flat) ** 2).sum()
    bce = -(flat * x_prime.log() + (1 - flat) * (1 - x_prime).log()).sum()
    assert torch.allclose(negative_elbo(x_prime, x, mu, logvar), squared + kl)
    assert torch.allclose(negative_elbo(x_prime, x, mu, logvar, beta=0.25), squared + 0.25 * kl)
    assert torch.allclose(negative_elbo(x_prime, x, mu, logvar, recon="bce"), bce + kl)
    with pytest.raises(ValueError, match="mse"):
        vae.reconstruction_loss(x_prime, x, kind="l1")


@pytest.mark.parametrize("kind", [SpecVAE, OwnVAE, FlattenVAE])
def test_short_training_run_lowers_the_loss(digits, kind):
    # Catches: gradients that miss the weights, a loss of the wrong sign, a need beyond four parts.
    images = digits[0]
    torch.manual_seed(0)
    model = kind()
    before = sum(train.evaluate(model, images)).item()
    optimizer = train.make_optimizer(model, 1e-3)
    for _ in range(5):
        train.train_epoch(model, optimizer, images, 32)
    assert sum(train.evaluate(model, images)).item() < 0.8 * before
    assert list(train.iwae_table(model, images[:20], 10)) == [1, 10]


# ---------------------------------------------------------------- vae.py
def test_log_likelihood_is_the_decoders_whole_density():
    # Catches: a wrong normalising constant or variance, x and x_prime swapped, a wrong sum axis.
    torch.manual_seed(0)
    x_prime = torch.rand(3, 5, 784) * 0.98 + 0.01  # three decodings of five images
    x = torch.rand(5, 1, 28, 28)
    binary = (x > 0.5).float()
    gaussian = Normal(x_prime, math.sqrt(0.5)).log_prob(x.reshape(5, 784)).sum(-1)
    torch.testing.assert_close(log_likelihood(x_prime, x, "mse"), gaussian)
    bernoulli = Bernoulli(probs=x_prime).log_prob(binary.reshape(5, 784)).sum(-1)
    torch.testing.assert_close(log_likelihood(x_prime, binary, "bce"), bernoulli)
    assert vae.log_likelihood_constant("mse") == pytest.approx(392 * math.log(math.pi))  # 448.73
    assert vae.log_likelihood_constant("bce") == 0
    with pytest.raises(ValueError, match="mse"):
        log_likelihood(x_prime[0], x, "l1")


def narrow_posteriors(z_dims=3, input_size=784, hidden=32):
    """A small VAE whose posteriors are narrow and off-centre and whose decoder leans on z."""
    torch.manual_seed(0)
    model = VAE(z_dims=z_dims, input_size=input_size, num_hidden=hidden)
    with torch.no_grad():
        model.mu.bias.copy_(torch.linspace(-1, 1, z_dims))
        model.logvar.bias.fill_(-3.0)
        model.decoder[0].weight.mul_(3)
    return model


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_iwae_bound_with_one_sample_is_the_elbo(kind):
    # Catches: a wrong log-weight (prior, posterior, decoder's constant), z not from q(z|x).
    model = narrow_posteriors()
    x = torch.rand(5, 1, 28, 28)
    x = (x > 0.5).float() if kind == "bce" else x
    first = iwae_bound(model, x, 1, kind, seeded(7))
    assert torch.equal(iwae_bound(model, x.reshape(5, 784), 1, kind, seeded(7)), first)
    spec = SpecVAE(z_dims=3, num_hidden=32)
    spec.load_state_dict(model.state_dict())
    assert torch.equal(iwae_bound(spec, x, 1, kind, seeded(7)), first)
    mu, logvar = model.encode(x)  # one draw: log p(x|z) + log p(z) - log q(z|x)
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = mu + q.scale * torch.randn((1, 5, 3), generator=seeded(7))[0]
    likelihood = log_likelihood(model.decoder(z), x, kind)
    prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
    weight = likelihood + prior - q.log_prob(z).sum(-1)
    torch.testing.assert_close(first, weight.detach(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_iwae_bound_rises_with_k_to_log_p_x_by_numerical_integration(kind):
    # Catches: a bound that does not tighten with k or overshoots log p(x) (integrated on a grid).
    model = narrow_posteriors(z_dims=2, input_size=16, hidden=16)
    with torch.no_grad():  # a wide q(z|x), so that the bound converges in a few thousand samples
        model.logvar.weight.zero_()
        model.logvar.bias.fill_(0.5)
        model.decoder[-2].weight.mul_(3)
    x = torch.rand(4, 16)
    x = (x > 0.5).float() if kind == "bce" else x
    grid = torch.linspace(-8, 8, 801)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)
    with torch.no_grad():
        joint = log_likelihood(model.decoder(z), x, kind) + Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_p_x = torch.logsumexp(joint, 0) + 2 * math.log(grid[1] - grid[0])
    generator = seeded(0)

    def mean_bound(k, draws):
        return iwae_bound(model, x.repeat(draws, 1), k, kind, generator).reshape(draws, 4).mean(0)

    elbo = mean_bound(1, 2000)
    ten = mean_bound(10, 200)
    hundred = mean_bound(100, 200)
    with pytest.raises(ValueError, match="at least 1"):
        iwae_bound(model, x, 0, kind)
    assert (elbo < ten).all() and (ten < hundred).all() and (hundred < log_p_x + 0.01).all()
    assert (elbo < log_p_x - 0.3).all()  # the ELBO is clearly loose here
    far = iwae_bound(model, x, 20_000, kind, generator)
    torch.testing.assert_close(far, log_p_x, atol=0.05, rtol=0)


# ---------------------------------------------------------------- train.py
DEFAULTS = dict(epochs=2, batch_size=32, lr=1e-3, z_dims=4, hidden=128, beta=1.0, recon="mse")
EPOCH_LINE = re.compile(
    r"epoch \d+/\d+  train (-ELBO|loss) ([\d.]+) \(recon ([\d.]+) \+ (?:([\d.]+) x )?KL ([\d.]+)\)"
    r"  test -ELBO ([\d.]+) \(recon ([\d.]+) \+ KL ([\d.]+)\)  [\d.]+s on (\d) threads?"
)
CHANGED = dict(epochs=3, batch_size=50, lr=3e-3, z_dims=3, hidden=32, beta=0.5, recon="bce")
CHANGED.update(binarize=True, seed=7)  # each differs from its default; the last batch is partial
SETTINGS = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in CHANGED.items()]


def train_by_hand(images, test_images, binarize=False, seed=0, **flags):
    """train.py's flags written out from torch and vae.py: the model and each epoch's figures."""
    epochs, batch_size, lr, z_dims, hidden, beta, recon = {**DEFAULTS, **flags}.values()
    torch.manual_seed(seed)
    model = VAE(z_dims=z_dims, num_hidden=hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if binarize:  # once, from a generator seeded with 0, whatever --seed says
        test_images = torch.bernoulli(test_images, generator=seeded(0))
    figures = []
    for _ in range(epochs):
        terms = torch.zeros(2)
        order = torch.randperm(len(images))
        for start in range(0, len(images), batch_size):
            x = images[order[start : start + batch_size]]
            x = torch.bernoulli(x) if binarize else x
            x_prime, mu, logvar = model(x)
            reconstruction = vae.reconstruction_loss(x_prime, x, recon)
            kl = kl_divergence(mu, logvar)
            optimizer.zero_grad()
            (reconstruction + beta * kl).backward()
            optimizer.step()
            terms += torch.stack([reconstruction, kl]).detach()
        train_recon, train_kl = (terms / len(images)).tolist()
        with torch.no_grad():  # the test -ELBO: beta 1, z from a generator seeded with 0
            mu, logvar = model.encode(test_images)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=seeded(0))
            n = len(test_images)
            test_recon = vae.reconstruction_loss(model.decoder(z), test_images, recon).item() / n
            test_kl = kl_divergence(mu, logvar).item() / n
        test = [test_recon + test_kl, test_recon, test_kl]
        figures.append([train_recon + beta * train_kl, train_recon, train_kl, *test])
    return model, figures


def printed_epochs(out):
    """The figures of each epoch line: train loss, recon, KL, test -ELBO, recon, KL."""
    return [[float(m[k]) for k in (2, 3, 5, 6, 7, 8)] for m in EPOCH_LINE.finditer(out)]


@pytest.mark.parametrize("settings", [{}, CHANGED], ids=["defaults", "every flag changed"])
def test_train_does_and_prints_what_its_flags_say(tmp_path, mnist_dir, capsys, settings):
    # Catches: a flag ignored or misrouted, a wrong printed figure or history row, an unseeded run.
    run_train(tmp_path, mnist_dir, "--iwae", "0", *(SETTINGS if settings else []))
    images, labels = train.load_mnist(mnist_dir, train=True)
    test_images = train.load_mnist(mnist_dir, train=False)[0]
    assert images.shape == (320, 784) and images.dtype == torch.float32 and len(test_images) == 64
    assert images.min() >= 0 and 0.5 < images.max() <= 1 and labels.max() <= 9
    model, expected = train_by_hand(images, test_images, **settings)
    out = capsys.readouterr().out
    printed = printed_epochs(out)
    np.testing.assert_allclose(printed, expected, atol=0.0051)  # printed with two decimals
    named = {(m[1], m[4]) for m in EPOCH_LINE.finditer(out)}
    assert named == ({("loss", "0.5")} if settings else {("-ELBO", None)})
    rows = list(csv.reader(open(tmp_path / "vae.csv", newline="")))
    assert rows[0] == [*HISTORY_COLUMNS, "dataset"] and {row[10] for row in rows[1:]} == {"mnist"}
    assert [int(row[0]) for row in rows[1:]] == list(range(1, len(expected) + 1))
    written = [[float(v) for v in row[1:7]] for row in rows[1:]]
    np.testing.assert_allclose(written, printed, atol=0.0051)
    constant = round(vae.log_likelihood_constant(settings.get("recon", "mse")), 4)
    units = {(float(row[8]), int(row[9])) for row in rows[1:]}
    assert units == {(constant, int(settings.get("binarize", False)))}
    saved = load(tmp_path / "vae.pt")
    for k, v in model.state_dict().items():  # fused Adam against torch's default: not bitwise
        torch.testing.assert_close(saved[k], v, atol=1e-5, rtol=0)


def test_adam_is_fused_only_where_the_device_has_the_kernel_and_auto_prefers_a_gpu(monkeypatch):
    # Catches: a fused fallback that never runs, --device ignored, auto preferring the CPU.
    assert train.make_optimizer(VAE(), 1e-3).defaults["fused"]
    assert not train.make_optimizer(VAE().to("meta"), 1e-3).defaults["fused"]
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    for cuda, auto in ((True, "cuda"), (False, "mps")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert train.pick_device("auto").type == auto and train.pick_device("cpu").type == "cpu"


@pytest.fixture
def data_folder(tmp_path, mnist_dir, monkeypatch):
    """tmp_path as the working folder, as a notebook sees it: MNIST in data/, and no network."""
    monkeypatch.setattr(datasets.MNIST, "mirrors", [])
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", [])
    monkeypatch.chdir(tmp_path)
    shutil.copytree(mnist_dir, tmp_path / "data")
    return tmp_path


def refused_before_training(terminal, folder, *flags, code=1):
    """train.py's one line for flags, once checked that it wrote nothing."""
    line = refused(terminal, "train.py", "--data-dir", "data", *flags, code=code)
    assert not (folder / "vae.pt").exists()
    return line


BAD_FLAGS = ["--epochs 0", "--epochs two", "--batch-size -1", "--z-dims 0", "--hidden 0"]
BAD_FLAGS += ["--lr nan", "--lr 0", "--lr inf", "--beta -1", "--recon l1", "--device tpu"]
BAD_FLAGS += ["--seed -1", f"--seed {2**64}", "--iwae -1", "--threads 0", "--dataset cifar"]
WRITABLE = "give a file name in a folder that exists"
INSIDE = "is inside the data: give the folder that holds MNIST/raw"
FASHION = "no FashionMNIST in nodata/FashionMNIST/raw, and no download: copy its four"
UNUSABLE = {  # flags for what train.py cannot use, and what it says
    "--device cuda": "sees no CUDA here; leave --device out to use the CPU",
    "--device mps": "sees no MPS here; leave --device out to use the CPU",
    "--out missing/vae.pt": f"--out missing/vae.pt: {WRITABLE}",
    "--out .": f"--out .: {WRITABLE}",
    "--data-dir data/MNIST": f"--data-dir data/MNIST {INSIDE}",
    "--data-dir data/MNIST/raw": f"--data-dir data/MNIST/raw {INSIDE}",
    "--data-dir nodata": "no MNIST in nodata/MNIST/raw, and no download: copy its four",
    "--data-dir nodata --dataset fashion": FASHION,
}
DAMAGES = {
    "cut short": lambda b: b[:5000],
    "empty": lambda b: b"",
    "gzipped": gzip.compress,
    "a web page": lambda b: b"<html><body>Not Found</body></html>",
}


@pytest.mark.parametrize("flags", BAD_FLAGS)
def test_a_flag_out_of_range_is_refused_naming_it(data_folder, terminal, flags):
    # Catches: a nonsense setting that trains quietly, or ends in a traceback.
    line = refused_before_training(terminal, data_folder, *flags.split(), code=2)
    assert f"error: argument {flags.split()[0]}" in line


@pytest.mark.parametrize("flags", UNUSABLE)
def test_a_device_or_path_that_cannot_be_used_is_refused_with_the_fix(data_folder, terminal, flags):
    # Catches: a silent CPU fallback, an unwritable --out, a wrong fix for missing or misplaced data
    name, value = flags.split()[:2]
    if name == "--device" and train.pick_device("auto").type == value:
        pytest.skip("this machine has the device")
    line = refused_before_training(terminal, data_folder, *flags.split())
    assert UNUSABLE[flags] in line and len(line) < 130  # one short sentence and the fix


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_file_is_named_as_damaged(data_folder, terminal, damage):
    # Catches: a damaged file called missing, or read as a short data set.
    images = data_folder / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(DAMAGES[damage](images.read_bytes()))
    line = refused_before_training(terminal, data_folder)
    assert "t10k-images-idx3-ubyte or t10k-labels-idx1-ubyte in" in line and "damaged" in line


@pytest.mark.parametrize("figure", ["train_recon", "train_kl", "test_kl"])
def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path, mnist_dir, monkeypatch, figure):
    # Catches: a NaN model saved over good weights or recorded, a message naming the wrong figure.
    good = load(run_train(tmp_path, mnist_dir, "--epochs", "1", "--iwae", "0", out="good.pt"))
    owner = "train_epoch" if figure.startswith("train") else "evaluate"
    nan = torch.tensor([math.nan, 1] if figure.endswith("recon") else [1, math.nan])  # recon, KL
    on_call(monkeypatch, train, owner, 2, lambda real, *a, **k: real(*a, **k) * nan)
    message = f"{figure} became nan in epoch 2; 1 good epoch kept in .*vae.pt; train anew with a"
    with pytest.raises(FloatingPointError, match=message):
        run_train(tmp_path, mnist_dir)
    assert same_weights(load(tmp_path / "vae.pt"), good)
    assert [row["epoch"] for row in history(tmp_path / "vae.csv")] == ["1"]
    on_call(monkeypatch, train, owner, 1, lambda real, *a, **k: real(*a, **k) * nan)  # a new run
    with pytest.raises(FloatingPointError, match="epoch 1; nothing was saved; train again with"):
        run_train(tmp_path, mnist_dir, out="first.pt")


def test_ctrl_c_in_a_script_says_what_is_saved(tmp_path, mnist_dir, monkeypatch, terminal):
    # Catches: a traceback on Ctrl-C, a message that misstates what was saved or --resume's use.
    args = at_vae_pt(tmp_path, mnist_dir, *FAST, "--epochs", "3")
    with monkeypatch.context() as patch:
        patch.setattr(datasets, "MNIST", interrupt)  # read as train.py starts
        status, _, err = terminal("train.py", *args)
    assert status == 130 and err.strip().endswith("before training began; nothing was changed")
    out = tmp_path / "vae.pt"
    on_call(monkeypatch, torch, "randperm", 3, interrupt)  # as epoch 3 begins
    status, _, err = terminal("train.py", *args)
    said = f"train.py: interrupted; {out} and {tmp_path / 'vae.csv'} hold epoch 2"
    go_on = f"python train.py --resume --out {out} --data-dir {mnist_dir} goes on from there"
    assert status == 130 and err.strip() == f"{said}; {go_on}"
    assert len(history(tmp_path / "vae.csv")) == 2
    on_call(monkeypatch, train.vae, "iwae_bound", 1, interrupt)  # after the last epoch
    status, _, err = terminal("train.py", *args, "--resume", "--iwae", "10")
    assert status == 130 and err.strip().endswith("vae.csv hold epoch 3")  # no --resume offered


def test_notebook_ctrl_c_returns_the_model_and_can_resume(tmp_path, mnist_dir, monkeypatch, capsys):
    # Catches: SystemExit in a notebook (the model lost), a resumed run that cannot stop again.
    monkeypatch.setattr(train, "in_notebook", lambda: True)
    args = at_vae_pt(tmp_path, mnist_dir, *FAST, "--epochs", "3")
    with monkeypatch.context() as patch:
        on_call(patch, torch, "randperm", 2, interrupt)  # as epoch 2 begins
        model = train.main(args)
    assert same_weights(model.state_dict(), load(tmp_path / "vae.pt"))
    err = capsys.readouterr().err
    go_on = f'train.main("--resume --out {tmp_path / "vae.pt"} --data-dir {mnist_dir}")'
    assert f"hold epoch 1; {go_on} goes on from there\nreturning the model as it is now" in err
    with monkeypatch.context() as patch:  # a resumed run, interrupted as epoch 3 begins
        on_call(patch, torch, "randperm", 2, interrupt)
        assert isinstance(train.main([*args, "--resume"]), VAE)
    assert f"hold epoch 2; {go_on} goes on from there" in capsys.readouterr().err
    assert isinstance(train.main([*args, "--resume"]), VAE)
    assert len(history(tmp_path / "vae.csv")) == 3


def test_a_save_stopped_halfway_leaves_the_last_checkpoint_whole(tmp_path):
    # Catches: a checkpoint written in place, which a kill mid-write corrupts.
    path = tmp_path / "vae.pt"
    path.write_bytes(b"the last checkpoint")
    with pytest.raises(KeyboardInterrupt):  # half a checkpoint written, then Ctrl-C
        train.write_atomically(str(path), lambda f: f.write(b"half a checkpoint") and interrupt())
    assert path.read_bytes() == b"the last checkpoint"


# ---------------------------------------------------------------- train.py --resume
def the_files(tmp_path):
    """Each file a run keeps in tmp_path, as bytes."""
    paths = [tmp_path / name for name in ("vae.pt", "vae.csv", "vae.resume.pt")]
    return {path.name: path.read_bytes() for path in paths if path.exists()}


RESUMED = ["--binarize", "--z-dims", "3", "--iwae", "10"]  # binary pixels: more random state
REFUSED_AT_A_SAVED_RUN = {  # flags for the --out of a saved run of 2 epochs, and what train.py says
    "--resume --z-dims 8": "--resume: {out} was trained with --z-dims 4; leave --z-dims out",
    "--resume --lr 0.01": "--resume: {out} was trained with --lr 0.001; leave --lr out",
    "--resume --binarize": "--resume: {out} was trained with --binarize False",
    "--resume --seed 1": "--resume: {out} was trained with --seed 0",
    "--resume --batch-size 64": "--resume: {out} was trained with --batch-size 32",
    "--resume --dataset fashion": "--resume: {out} was trained with --dataset mnist",
    "--z-dims 2": "with --z-dims 4; to go on with it: {go_on} --epochs 10 --data-dir {data};",
    "--epochs 3": "holds 2 epochs of this run; to go on: {go_on} --epochs 3 --data-dir {data};",
    "--epochs 1": "{out} holds 2 epochs, more than --epochs 1;",
}


class Killed(BaseException):
    """kill -9: nothing after it runs, neither except nor finally blocks that might tidy up."""


def kill(real, *args, **kwargs):
    raise Killed


@pytest.mark.parametrize(
    "owner, name, call",  # where kill -9 lands: which call of which function
    [(train, "write_atomically", 4), (train, "write_atomically", 5), (vae, "kl_divergence", 15)],
    ids=["after a checkpoint", "after a history", "mid-epoch"],
)
def test_a_run_killed_anywhere_and_resumed_on_2_threads_ends_as_one_never_stopped(
    tmp_path, mnist_dir, monkeypatch, capsys, owner, name, call
):
    # Catches: Adam, random state, epoch or --epochs not restored; figures that vary by thread.
    straight = run_train(tmp_path, mnist_dir, *RESUMED, "--epochs", "3", out="straight.pt")
    bound = BOUND_ROW.findall(capsys.readouterr().out)
    with monkeypatch.context() as patch:
        on_call(patch, owner, name, call, kill)
        with pytest.raises(Killed):
            run_train(tmp_path, mnist_dir, *RESUMED, "--epochs", "3")
    capsys.readouterr()
    flags = ["--resume", "--device", "cpu", "--threads", "2", "--iwae", "10"]  # nor --epochs
    train.main(at_vae_pt(tmp_path, mnist_dir, *flags))
    resumed = str(tmp_path / "vae.pt")
    out = capsys.readouterr().out
    epochs = [line[:9] for line in out.splitlines() if line.startswith("epoch")]
    assert f"resuming {resumed} after epoch 1" in out and epochs == ["epoch 2/3", "epoch 3/3"]
    assert same_weights(load(resumed), load(straight))
    assert BOUND_ROW.findall(out) == bound and len(bound) == 2  # -L_1 and -L_10
    assert figures(history(tmp_path / "vae.csv")) == figures(history(tmp_path / "straight.csv"))


@pytest.mark.parametrize("flags", REFUSED_AT_A_SAVED_RUN)
def test_a_saved_run_is_only_gone_on_with_by_resume(tmp_path, mnist_dir, terminal, flags):
    # Catches: a saved run replaced or trained on without --resume, or changed by a flag on resume.
    run_train(tmp_path, mnist_dir, "--iwae", "0")
    before = the_files(tmp_path)
    args = at_vae_pt(tmp_path, mnist_dir, "--batch-size", "32", "--threads", "1", *flags.split())
    line = refused(terminal, "train.py", *args)
    out = tmp_path / "vae.pt"
    go_on = f"python train.py --resume --out {out}"
    said = REFUSED_AT_A_SAVED_RUN[flags].format(out=out, go_on=go_on, data=mnist_dir)
    assert line.startswith("train.py: error: ") and said in line
    assert line.endswith("give --out a new name for a new run")
    assert the_files(tmp_path) == before


def test_the_same_command_again_starts_a_run_then_leaves_it_as_it_is(tmp_path, mnist_dir, capsys):
    # Catches: --resume failing with no run yet (a Colab cell run again), a finished run rewritten.
    model = load(run_train(tmp_path, mnist_dir, "--epochs", "1", "--resume"))
    assert "--resume: no run saved at" in capsys.readouterr().out
    before = the_files(tmp_path)
    for flags in ([], ["--resume"]):
        again = run_train(tmp_path, mnist_dir, "--epochs", "1", *flags)
        assert "holds epoch 1 of --epochs 1: nothing left to do" in capsys.readouterr().out
        assert same_weights(load(again), model) and the_files(tmp_path) == before


def test_files_from_elsewhere_at_out_are_never_replaced_nor_run(tmp_path, mnist_dir, terminal):
    # Catches: a checkpoint from elsewhere destroyed by a new run; a resume state that runs code.
    torch.save(VAE().state_dict(), tmp_path / "vae.pt")  # with no vae.resume.pt beside it
    kept = (tmp_path / "vae.pt").read_bytes()
    line = refused(terminal, "train.py", *at_vae_pt(tmp_path, mnist_dir))
    assert "vae.pt exists without the " in line and "give --out a new name" in line
    assert (tmp_path / "vae.pt").read_bytes() == kept
    torch.save({"flags": RunsCode(str(tmp_path / "code-ran"))}, tmp_path / "vae.resume.pt")
    with pytest.raises(pickle.UnpicklingError):
        train.main(at_vae_pt(tmp_path, mnist_dir, "--resume"))
    assert not (tmp_path / "code-ran").exists()


def test_fashion_runs_and_views_use_its_own_images(tmp_path, mnist_dir, terminal, capsys, drawn):
    # Catches: --dataset ignored or not recorded, a Fashion-MNIST checkpoint drawn against MNIST.
    checkpoint = run_train(tmp_path, mnist_dir, "--dataset", "fashion", "--iwae", "0")
    assert {row["dataset"] for row in history(tmp_path / "vae.csv")} == {"fashion"}
    images, labels = train.load_mnist(mnist_dir, False, dataset="fashion")
    assert not torch.equal(images, train.load_mnist(mnist_dir, False)[0])
    plot_cli(tmp_path, checkpoint, "--samples", "--data-dir", mnist_dir)
    shown = tiles(picture(drawn[0].axes[1]))[:10].reshape(10, 784)
    np.testing.assert_array_equal(shown, images[:10].numpy())
    plot_cli(tmp_path, checkpoint, "--scatter", "--data-dir", mnist_dir)
    classes = drawn[1].axes[-1]
    assert texts(classes.get_yticklabels()) == datasets.FashionMNIST.classes
    assert classes.get_title() == "class"
    plot_cli(tmp_path, checkpoint, "--posterior", "--data-dir", mnist_dir)
    named = ", ".join(datasets.FashionMNIST.classes[k] for k in labels[:8])
    assert f"test images 0 to 7, classes {named}" in capsys.readouterr().out
    line = refused_plot(terminal, tmp_path, checkpoint, "--samples", "--dataset", "mnist")
    assert "--dataset mnist: " in line and "was trained on fashion; leave --dataset out" in line


# ---------------------------------------------------------------- train.py: threads
PROBES = {  # seconds a pass takes on n threads; the count chosen, and the thread count of each pass
    "idle: 2 threads": ({1: 1.0, 2: 0.6}, 2, [1] * 10 + [2] * 10),
    "a core busy: 1 thread": ({1: 1.0, 2: 2.5}, 1, [1] * 10 + [2] * 5),
    "4 CPUs, idle: 4 threads": ({1: 1.0, 2: 0.6, 4: 0.5}, 4, [1] * 10 + [2] * 10 + [4] * 10),
    "2 threads 20 times slower": ({1: 1.0, 2: 20.0}, 1, [1] * 10 + [2]),
    "4 CPUs, 2 threads fastest": ({1: 1.0, 2: 0.125, 4: 0.5}, 2, [1] * 10 + [2] * 10 + [4] * 3),
}


@pytest.mark.parametrize("case", PROBES)
def test_the_probe_picks_the_fastest_thread_count_and_leaves_the_model_alone(monkeypatch, case):
    # Catches: a slower count kept or timed in full, counts the CPUs lack, side effects of a probe.
    seconds, chosen, expected = PROBES[case]
    threads_set(monkeypatch, cpus=max(seconds))
    clock = [0.0]
    counts = []
    monkeypatch.setattr(train.time, "perf_counter", lambda: clock[0])
    real = train.vae.negative_elbo

    def timed(*args, **kwargs):
        counts.append(torch.get_num_threads())
        clock[0] += seconds[counts[-1]]
        return real(*args, **kwargs)

    monkeypatch.setattr(train.vae, "negative_elbo", timed)
    model = OwnVAE()  # a student's, with a batch norm whose statistics training would move
    model.encoder = nn.Sequential(nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU())
    images = torch.rand(20, 784)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    assert train.fastest_threads(model, images, 10) == chosen
    assert torch.get_num_threads() == chosen and counts == expected
    assert same_weights(model.state_dict(), before) and torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("threads", ["3", "auto"])
def test_training_sets_and_says_its_threads(tmp_path, mnist_dir, monkeypatch, terminal, threads):
    # Catches: --threads ignored or unsaid, a notebook left with the training's thread count.
    set_to = threads_set(monkeypatch)
    flags = [] if threads == "auto" else ["--threads", threads]  # auto: the default
    args = at_vae_pt(tmp_path, mnist_dir, "--epochs", "1", "--batch-size", "32", *flags)
    status, out, _ = terminal("train.py", *args)
    assert status == 0 and "device: cpu\n" in out
    assert torch.get_num_threads() == 1 == set_to[-1]  # put back
    ran_on = int(re.search(r"s on (\d) threads?\n", out).group(1))
    assert ran_on == set_to[-2] and ran_on in ([1, 2] if threads == "auto" else [3])
    assert (2 in set_to) == (threads == "auto")  # auto times 2 threads each epoch
    assert [row[0] for row in BOUND_ROW.findall(out)] == ["1", "10", "50"]  # --iwae 50 by default
    assert sorted(os.listdir(tmp_path)) == ["vae.csv", "vae.pt", "vae.resume.pt"]  # no .tmp left


# ---------------------------------------------------------------- train.py: the bound, progress
BOUND_ROW = re.compile(r"^ +(\d+) +([\d.]+)(?: +([\d.]+))?$", re.M)
Log = type("Log", (io.StringIO,), {})  # a file or a pipe: no terminal
Terminal = type("Terminal", (io.StringIO,), {"isatty": lambda self: True})
STREAMS = {  # stdout, stderr, and where the bar shows
    "stdout to a log": (Log, Terminal, "stderr"),
    "stderr to a log": (Terminal, Log, None),
}


@pytest.mark.parametrize("recon", ["mse", "bce"])
def test_iwae_prints_mean_bounds_but_not_for_an_autoencoder(tmp_path, mnist_dir, capsys, recon):
    # Catches: --iwae ignored, figures not iwae_table's nor the mean of -L_k, a bound at --beta 0.
    flags = ["--recon", recon, "--iwae", "20"] + (["--binarize"] if recon == "bce" else [])
    model = plot_latents.load_model(run_train(tmp_path, mnist_dir, *flags))
    out = capsys.readouterr().out
    test_images = train.load_mnist(mnist_dir, train=False)[0]
    if recon == "bce":  # the bound on the binary pixels trained on
        test_images = train.binarize_once(test_images)
    table = train.iwae_table(model, test_images, 20, recon)
    rows = [[float(v) if v else None for v in row] for row in BOUND_ROW.findall(out)]
    constant = vae.log_likelihood_constant(recon)
    assert [row[0] for row in rows] == [1, 10, 20]
    np.testing.assert_allclose([row[1] for row in rows], list(table.values()), atol=0.006)
    less = [pytest.approx(bound - constant, abs=0.006) for bound in table.values()]
    assert [row[2] for row in rows] == (less if recon == "mse" else [None] * 3)
    gap = float(re.search(r"-L_1 - \(-L_20\) = ([\d.]+) nats", out).group(1))
    assert gap == pytest.approx(table[1] - table[20], abs=0.006) and gap > 0
    last_epoch = printed_epochs(out)[-1][3]  # one z per image, other draws
    assert rows[0][1] - constant == pytest.approx(last_epoch, abs=1.0)
    generator = seeded(0)
    expected = {1: 0.0, 10: 0.0}
    for start in (0, 40):
        for k in expected:
            x = test_images[start : start + 40]
            expected[k] -= iwae_bound(model, x, k, recon, generator).sum().item()
    table = train.iwae_table(model, test_images, 10, recon, batch_size=40)
    assert table == pytest.approx({k: v / 64 for k, v in expected.items()})
    assert list(train.iwae_table(model, test_images[:5], 1000)) == [1, 10, 100, 1000]
    run_train(tmp_path, mnist_dir, "--epochs", "1", "--beta", "0", out="ae.pt")
    out = capsys.readouterr().out
    assert "-L_k" not in out and "--beta 0: a plain autoencoder" in out


@pytest.mark.parametrize("streams", STREAMS)
def test_progress_bar_shows_on_a_terminal_only_and_is_erased(digits, monkeypatch, streams):
    # Catches: a bar that fills a log, never shows, or stays on screen after each epoch or table.
    monkeypatch.setattr(tqdm, "_instances", weakref.WeakSet())  # none left by a killed run
    stdout_kind, stderr_kind, bar = STREAMS[streams]
    monkeypatch.setattr(sys, "stdout", stdout_kind())
    monkeypatch.setattr(sys, "stderr", stderr_kind())
    model = VAE()
    train.train_epoch(model, train.make_optimizer(model, 1e-3), digits[0])
    train.iwae_table(model, digits[0][:20], 2)
    shown = {"stdout": sys.stdout.getvalue(), "stderr": sys.stderr.getvalue()}
    assert [name for name, text in shown.items() if "batch" in text] == ([bar] if bar else [])
    if bar:
        assert shown[bar].count(" 0%|") == 2 and "\n" not in shown[bar]  # two bars, each from 0%
        assert shown[bar].endswith("\r") and shown[bar].rstrip("\r").split("\r")[-1].strip() == ""


def test_a_notebooks_bar_waits_10_seconds_then_redraws_each_10(monkeypatch):
    # Catches: a saved notebook piled with redraws, a bar that sits at 0% through a short epoch.
    monkeypatch.setattr(train, "in_notebook", lambda: True)
    monkeypatch.setattr(sys, "stderr", Log())  # a kernel's stream: no terminal
    clock = itertools.count()  # a second each time tqdm reads it
    monkeypatch.setattr("tqdm.std.time", lambda: next(clock))
    list(train.progress(range(50)))
    drawn = sys.stderr.getvalue().split("\r")
    bars = [line for line in drawn if "batch" in line]
    assert 1 <= len(bars) <= 5 and " 0%" not in bars[0] and drawn[-1] == ""


def test_in_a_notebook_main_takes_the_defaults_a_string_and_raises_bad_flags(tmp_path, monkeypatch):
    # Catches: main() parsing the kernel's arguments, a string parsed letter by letter, SystemExit.
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/run/kernel-1.json"])
    assert train.parse_args() == train.parse_args([])
    assert plot_latents.parse_args() == plot_latents.parse_args([])
    three = train.parse_args(["--epochs", "3", "--z-dims", "2"])
    assert train.parse_args("--epochs 3 --z-dims 2") == three != train.parse_args()
    assert plot_latents.parse_args("--samples --n 3").n == 3
    monkeypatch.setattr(train, "in_notebook", lambda: True)
    with pytest.raises(ValueError, match="train.py: unrecognized arguments: --zdims 2"):
        train.main(["--zdims", "2"])
    with pytest.raises(ValueError, match="plot_latents.py: argument --n: must be a positive"):
        plot_latents.main(["--n", "0"])
    monkeypatch.setattr(datasets.MNIST, "mirrors", [])
    with pytest.raises(FileNotFoundError, match="no MNIST in"):
        train.main(["--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path / "vae.pt")])
    with pytest.raises(FileNotFoundError, match="train one first: python train.py"):
        plot_latents.main(["--checkpoint", str(tmp_path / "none.pt")])


# ---------------------------------------------------------------- plot_latents.py: the pictures
QUANTILES = Normal(0.0, 1.0).icdf((torch.arange(5) + 0.5) / 5)  # at the centres of 5 tiles
HISTORY = [  # as train.py writes it: 3 epochs at --beta 0.5
    dict(zip(HISTORY_COLUMNS, (1, 50.0, 45.0, 10.0, 47.0, 40.0, 7.0, 1.5, 448.7341, 0))),
    dict(zip(HISTORY_COLUMNS, (2, 40.0, 36.0, 8.0, 38.5, 33.0, 5.5, 1.4, 448.7341, 0))),
    dict(zip(HISTORY_COLUMNS, (3, 35.0, 32.0, 6.0, 34.0, 29.5, 4.5, 1.3, 448.7341, 0))),
]
IMAGES = torch.rand(50, 1, 28, 28)  # the plots take (N, 784) as well: see their own tests
PLOTS = {  # each public function that takes a model, and its arguments after the model
    "plot_latents": (plot_latents.plot_latents, ()),
    "plot_samples": (plot_latents.plot_samples, ()),
    "plot_decoded_means": (plot_latents.plot_decoded_means, (IMAGES[:5],)),
    "plot_reconstructions": (plot_latents.plot_reconstructions, (IMAGES,)),
    "plot_interpolation": (plot_latents.plot_interpolation, (IMAGES[:2], IMAGES[2:4])),
    "plot_posterior_draws": (plot_latents.plot_posterior_draws, (IMAGES[:3],)),
    "plot_marginals": (plot_latents.plot_marginals, (IMAGES, 1)),
    "plot_posterior_means": (plot_latents.plot_posterior_means, ()),
    "plot_curves": (plot_latents.plot_curves, ()),
}


@pytest.mark.parametrize("spacing", ["linear", "quantile"])
def test_grid_tile_at_row_r_column_c_decodes_x_c_and_y_reversed(spacing):
    # Catches: a flipped or transposed grid, i and j swapped, quantiles off the tiles' centres.
    values = torch.linspace(-1.5, 1.5, 4) if spacing == "linear" else QUANTILES
    n = len(values)
    model = small_vae()
    ax = plot_latents.plot_latents(model, i=2, j=0, n=n, limit=1.5, spacing=spacing)
    z = torch.zeros(n, n, 3)
    z[:, :, 2] = values[None]
    z[:, :, 0] = values.flip(0)[:, None]
    decoded = model.decoder(z.reshape(-1, 3)).detach().reshape(-1, 28, 28)
    np.testing.assert_allclose(tiles(picture(ax)), decoded, atol=1e-5)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Latent dimension 2", "Latent dimension 0")
    if spacing == "linear":  # each tile's centre sits at its z value
        np.testing.assert_allclose(ax.images[0].get_extent(), [-2.0, 2.0] * 2)
        assert title(ax).endswith("over [-1.5, 1.5], the others at 0")
        one = plot_latents.plot_latents(model, n=1)  # one tile: the centre, not the corner
        centre = model.decoder(torch.zeros(1, 3)).detach().reshape(28, 28)
        np.testing.assert_allclose(picture(one), centre, atol=1e-6)
        np.testing.assert_allclose(one.images[0].get_extent(), [-2, 2, -2, 2])
    else:
        names = [f"{v:.2f}" for v in values.tolist()]
        assert texts(ax.get_xticklabels()) == names and texts(ax.get_yticklabels()) == names
        np.testing.assert_allclose(ax.get_xticks(), np.arange(n) + 0.5)
        np.testing.assert_allclose(ax.images[0].get_extent(), [0, n, 0, n])  # bottom: lowest z_j
        assert "quantiles" in ax.get_title()


def test_samples_are_the_seeded_prior_draws_decoded_row_major():
    # Catches: samples not from the seeded z ~ N(0, I), tiles out of order, grey levels rescaled.
    model = small_vae()
    ax = plot_latents.plot_samples(model, n=3, seed=5)
    decoded = model.decoder(torch.randn(9, 3, generator=seeded(5))).detach().reshape(9, 28, 28)
    np.testing.assert_allclose(tiles(picture(ax)), decoded, atol=1e-6)
    assert ax.images[0].get_clim() == (0, 1) and ax.images[0].get_cmap().name == "gray"
    assert "E[x|z]" in ax.get_title() and "N(0, I)" in ax.get_title()


def test_reconstructions_are_the_images_over_decode_of_mu():
    # Catches: reconstructions of a sampled z, rows swapped, pixels of 0 to 255 drawn.
    model = small_vae()
    images = torch.rand(12, 1, 28, 28)
    ax = plot_latents.plot_reconstructions(model, images, n=5)
    grid = picture(ax)
    assert grid.shape == (2 * 28, 5 * 28)
    np.testing.assert_array_equal(tiles(grid)[:5], images[:5, 0].numpy())
    decoded = model.decoder(model.mu(model.encoder(images[:5].reshape(5, 784))))
    np.testing.assert_allclose(tiles(grid)[5:], decoded.detach().reshape(5, 28, 28), atol=1e-6)
    assert texts(ax.get_yticklabels()) == ["image", "decode(mu)"]
    flat = plot_latents.plot_reconstructions(model, images.reshape(12, 784), n=5)
    assert np.array_equal(picture(flat), grid)
    wrong = {"divide": (images * 255, 5), "[0, 1]": (images - 0.5, 5), "<= 12": (images, 13)}
    for message, (bad, n) in wrong.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            plot_latents.plot_reconstructions(model, bad, n=n)


def test_interpolation_decodes_the_mixed_posterior_means_between_the_originals():
    # Catches: points unevenly spaced or missing an end, sampled z instead of the means.
    model = small_vae()
    start = torch.rand(3, 1, 28, 28)
    end = torch.rand(3, 784)
    ax = plot_latents.plot_interpolation(model, start, end, n=4)
    got = tiles(picture(ax)).reshape(3, 6, 28, 28)
    a, b = (model.encode(images)[0].detach() for images in (start, end))
    line = a[:, None] + torch.linspace(0, 1, 4)[None, :, None] * (b - a)[:, None]
    np.testing.assert_array_equal(got[:, 0], start[:, 0].numpy())
    np.testing.assert_array_equal(got[:, -1], end.reshape(3, 28, 28).numpy())
    decoded = model.decoder(line).detach().reshape(3, 4, 28, 28)
    np.testing.assert_allclose(got[:, 1:-1], decoded, atol=1e-6)
    assert texts(ax.get_xticklabels()) == ["start", "mu(start)", "mu(end)", "end"]
    one = plot_latents.plot_interpolation(model, start[1, 0], end[1], n=4)
    np.testing.assert_allclose(picture(one), picture(ax)[28:56], atol=1e-6)
    with pytest.raises(ValueError, match="n >= 2"):
        plot_latents.plot_interpolation(model, start, end, n=1)


def test_posterior_draws_decode_q_of_z_given_x_beside_the_mean():
    # Catches: draws from the prior or the mean instead of q(z|x), the seed ignored.
    model = narrow_posteriors(z_dims=3, hidden=16)
    images = torch.rand(2, 784)
    ax = plot_latents.plot_posterior_draws(model, images, n=3, seed=4)
    got = tiles(picture(ax)).reshape(2, 5, 28, 28)
    mu, logvar = model.encode(images)
    eps = torch.randn(2, 3, 3, generator=seeded(4))
    draws = model.decoder(mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps)
    np.testing.assert_array_equal(got[:, 0], images.reshape(2, 28, 28).numpy())
    np.testing.assert_allclose(got[:, 1], model.decoder(mu).detach().reshape(2, 28, 28), atol=1e-6)
    np.testing.assert_allclose(got[:, 2:], draws.detach().reshape(2, 3, 28, 28), atol=1e-6)
    assert not np.allclose(got[0, 2], got[0, 1], atol=1e-3)  # the draws are not the mean
    assert texts(ax.get_xticklabels())[:2] == ["image", "decode(mu)"]


def test_marginals_are_the_means_and_the_codes_of_dimension_dim():
    # Catches: means and codes swapped, the wrong dimension, histograms that are not densities.
    model = small_vae(hidden=32)
    images = torch.rand(400, 784)
    with torch.no_grad():
        model.mu.weight.mul_(20)
        model.logvar.bias.fill_(1.0)  # codes spread visibly wider than the means
    ax = plot_latents.plot_marginals(model, images, dim=2)
    mu, logvar = (t.detach() for t in model.encode(images))
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=seeded(0))
    legend = texts(ax.get_legend().get_texts())
    for bars, values, name in zip(ax.containers, (z[:, 2], mu[:, 2]), ("codes z", "means mu(x)")):
        edges = np.append([b.get_x() for b in bars], bars[-1].get_x() + bars[-1].get_width())
        heights = np.histogram(values, edges, density=True)[0]
        np.testing.assert_allclose([b.get_height() for b in bars], heights, rtol=1e-4)
        variance = f"{values.var(correction=0):.3f}"
        assert any(t.startswith(name) and t.endswith(variance) for t in legend)
    assert len(ax.containers) == 2 and ax.get_xlabel() == "latent dimension 2"
    assert "N(0, 1)" in ax.lines[0].get_label()
    fit = ax.lines[1]  # the means' own Gaussian
    means = mu[:, 2].numpy()
    gaussian = plot_latents.normal_density(fit.get_xdata(), means.mean(), means.var())
    np.testing.assert_allclose(fit.get_ydata(), gaussian, rtol=1e-5)
    with pytest.raises(ValueError, match="dim = 3 is not a latent dimension here: use 0 to 2"):
        plot_latents.plot_marginals(model, images, dim=3)


def test_decoded_means_show_only_the_images_means_decoded():
    # Catches: prior codes or sampled z decoded in place of the means, the seed ignored.
    model = small_vae()
    images = torch.rand(3, 784)
    ax = plot_latents.plot_decoded_means(model, images, n=4, seed=1)
    decoded = model.decoder(model.encode(images)[0]).detach().reshape(3, 28, 28).numpy()
    shown = tiles(picture(ax))
    assert len(shown) == 16
    assert all(min(np.abs(tile - d).max() for d in decoded) < 1e-6 for tile in shown)
    assert len({tile.tobytes() for tile in shown}) == 3
    other = plot_latents.plot_decoded_means(model, images, n=4, seed=2)
    assert not np.array_equal(picture(other), picture(ax))


def test_the_construction_has_gaussian_codes_and_means_half_at_zero():
    # Catches: codes that are not N(0, 1), means without the spike, histograms swapped.
    ax = plot_latents.plot_aggregate_construction(s=0.5)
    legend = texts(ax.get_legend().get_texts())
    codes, means = (float(text.rsplit(" ", 1)[1]) for text in legend[:2])
    assert legend[0].startswith("codes") and codes == pytest.approx(1.0, abs=0.02)
    assert means == pytest.approx(0.5 * 0.75, abs=0.02)  # half at 0, half of variance 0.75
    assert max(bar.get_height() for bar in ax.containers[1]) > 2  # half the means in one bin
    assert "N(0, 0.75)" in title(ax) and ax.get_ylim() == (0, 1)


def test_defaults_agree_between_functions_and_the_command_line():
    # Catches: a function that draws 8 where its view draws --n's 10.
    n = plot_latents.parse_args([]).n
    for plot in (plot_latents.plot_posterior_draws, plot_latents.plot_decoded_means):
        assert inspect.signature(plot).parameters["n"].default == n


def plot_and_arguments(name, model):
    """PLOTS' function of that name, and what it takes before ax, for this model."""
    plot, args = PLOTS[name]
    if name == "plot_posterior_means":  # it draws posterior_stats' means, not the model
        return plot, (plot_latents.posterior_stats(model, IMAGES)[0], torch.randint(0, 10, (50,)))
    if name == "plot_curves":  # it draws a history
        return plot, (HISTORY,)
    return plot, (model, *args)


@pytest.mark.parametrize("kind", [SpecVAE, OwnVAE, FlattenVAE])
@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_returns_the_axes_of_one_figure_for_any_four_part_model(name, kind, monkeypatch):
    # Catches: a returned Figure (shown twice), an ax ignored, plt.show(), a need beyond four parts.
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: pytest.fail("plt.show() was called"))
    torch.manual_seed(0)
    before = set(plt.get_fignums())
    plot, args = plot_and_arguments(name, kind())
    ax = plot(*args, ax=None)
    assert isinstance(ax, Axes) and set(plt.get_fignums()) - before == {ax.figure.number}
    plt.close(ax.figure)
    given = Figure().add_subplot()
    assert plot(*args, ax=given) is given and given.has_data()
    assert set(plt.get_fignums()) == before


@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_stays_readable_twice_side_by_side(name):
    # Catches: titles or labels that run into each other at half width.
    torch.manual_seed(0)
    plot, args = plot_and_arguments(name, VAE())
    fig, panels = plt.subplots(1, 2)
    for ax in panels:
        plot(*args, ax=ax)
    fig.canvas.draw()
    labels = []
    for ax in fig.axes:  # a colour bar's too
        labels += [ax.title, ax.xaxis.label, ax.yaxis.label]
        labels += ax.get_legend().get_texts() if ax.get_legend() else []
        if ax.axison:  # the labels of the ticks drawn
            labels += [tick.label1 for tick in ax.xaxis._update_ticks() + ax.yaxis._update_ticks()]
    shown = [label for label in labels if label.get_visible() and label.get_text()]
    boxes = [(label.get_text(), label.get_window_extent()) for label in shown]
    for k, (text, box) in enumerate(boxes):
        crossed = [other for other, second in boxes[k + 1 :] if box.padded(1).overlaps(second)]
        assert not crossed, f"{text!r} runs into {crossed}"


def test_a_model_without_one_of_the_four_parts_is_refused_naming_all_four():
    # Catches: an AttributeError that gives no fix, deep inside a plot.
    model = OwnVAE()
    del model.mu
    with pytest.raises(TypeError, match="OwnVAE has no mu; a VAE's four parts are") as refusal:
        plot_latents.plot_samples(model)
    assert str(refusal.value).endswith("four parts are encoder, mu, logvar, decoder")


# ---------------------------------------------------------------- plot_latents.py: the curves
def write_histories(folder):
    """HISTORY as vae.csv, and one epoch of another run as ae.csv."""
    save_run(VAE(), folder / "vae.pt", HISTORY)
    other = dict(zip(HISTORY_COLUMNS, (1, 30.0, 28.0, 90.0, 130.0, 25.0, 105.0, 1.0, 448.7341, 0)))
    save_run(VAE(), folder / "ae.pt", [other])


def test_plot_curves_draws_the_histories_figures_in_their_units(tmp_path):
    # Catches: a series misplaced or misnamed, the train loss drawn as the -ELBO, a BOM refused.
    write_histories(tmp_path)
    left = plot_latents.plot_curves(str(tmp_path / "vae.csv"), label="vae.csv")
    plot_latents.plot_curves(tmp_path / "ae.csv", ax=left, label="ae.csv")
    lines = {line.get_label(): line for line in left.lines}
    data = {name: (list(line.get_xdata()), list(line.get_ydata())) for name, line in lines.items()}
    assert data["vae.csv: test -ELBO"] == ([1, 2, 3], [47.0, 38.5, 34.0])
    assert data["vae.csv: train -ELBO"] == ([1, 2, 3], [55.0, 44.0, 38.0])
    assert data["ae.csv: test -ELBO"] == ([1], [130.0])
    assert data["ae.csv: train -ELBO"] == ([1], [118.0])
    colour = {name: line.get_color() for name, line in lines.items()}
    assert colour["vae.csv: test -ELBO"] == colour["vae.csv: train -ELBO"]
    assert colour["vae.csv: test -ELBO"] != colour["ae.csv: test -ELBO"]
    assert texts(left.get_legend().get_texts()) == list(lines)
    right = plot_latents.plot_curves(HISTORY, terms=True)
    drawn = {line.get_label(): list(line.get_ydata()) for line in right.lines}
    assert drawn == {"test recon": [40.0, 33.0, 29.5], "test KL": [7.0, 5.5, 4.5]}
    terms = "MNIST: nats per image, recon less 448.73\n(squared error: Gaussian)"
    assert right.get_ylabel() == terms  # only the recon term leaves out a constant
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "vae.csv").read_bytes())
    excel = plot_latents.read_history(tmp_path / "excel.csv")
    assert excel == plot_latents.read_history(tmp_path / "vae.csv")


@pytest.mark.parametrize(
    "units, label",
    [
        ({}, "MNIST: nats per image, less 448.73\n(squared error: Gaussian)"),
        ({"nats_left_out": 0, "binarized": 1}, "MNIST: nats per image\n(binarized pixels: Bern"),
        ({"nats_left_out": 0, "binarized": 0}, "MNIST: cross-entropy per image\n(grey pixels: no"),
        ({"dataset": "fashion"}, "FashionMNIST: nats per image, less 448.73"),
    ],
    ids=["squared error", "binarized cross-entropy", "grey cross-entropy", "fashion"],
)
def test_the_curves_axis_says_what_the_figures_measure(units, label):
    # Catches: an axis that misstates its units.
    drawn = plot_latents.plot_curves([{**row, **units} for row in HISTORY])
    assert drawn.get_ylabel().startswith(label)


@pytest.mark.parametrize(
    "other", [{"nats_left_out": 0, "binarized": 1}, {"dataset": "fashion"}], ids=["units", "data"]
)
def test_curves_in_other_units_or_of_other_data_are_refused_not_overlaid(tmp_path, terminal, other):
    # Catches: curves in other units, or of other data, drawn as if they compared.
    write_histories(tmp_path)
    save_run(VAE(), tmp_path / "other.pt", [{**row, **other} for row in HISTORY])
    flags = ["--curves", str(tmp_path / "vae.csv"), str(tmp_path / "other.csv")]
    line = refused_plot(terminal, tmp_path, "vae.pt", *flags)
    named = "FashionMNIST: nats" if "dataset" in other else "MNIST: nats per image (binarized"
    assert f"other.csv is in {named}" in line
    assert ", the curves drawn in MNIST: nats per image, less 448.73" in line


def test_a_students_own_history_of_some_columns_draws():
    # Catches: a history refused for lacking columns, its units misnamed, a test -ELBO not summed.
    own = {"epoch": [1, 2], "train_loss": [60.0, 45.0], "test_nelbo": [50.0, 41.0]}  # a DataFrame's
    ax = plot_latents.plot_curves(own, label="mine")
    drawn = {line.get_label(): list(line.get_ydata()) for line in ax.lines}
    assert drawn == {"mine: test -ELBO": [50.0, 41.0], "mine: train loss": [60.0, 45.0]}
    assert ax.get_ylabel() == "per image, in the history's own units"
    plot_latents.plot_curves(HISTORY, ax=ax, label="train.py")
    summed = plot_latents.plot_curves([{"epoch": 1, "test_recon": 30.0, "test_kl": 5.0}])
    assert list(summed.lines[0].get_ydata()) == [35.0]
    with pytest.raises(ValueError, match="none of the figures"):
        plot_latents.plot_curves(own, terms=True)


BAD_HISTORIES = {  # what the history holds, and what the refusal says
    "missing": (None, "no history at"),
    "header only": (",".join(HISTORY_COLUMNS) + "\n", "holds no epochs"),
    "other columns": ("step,loss\n1,2.0\n", "it needs a column epoch"),
    "no epoch column": ("train_loss,test_nelbo\n1.0,2.0\n", "it needs a column epoch"),
    "letters for figures": (",".join(HISTORY_COLUMNS) + "\n1,a,b,c,d,e,f,g,h,i\n", "not numbers"),
    "not text": (b"\x89PNG\r\n\x1a\n\xff\xfe", "not text"),
}


@pytest.mark.parametrize("case", BAD_HISTORIES)
def test_bad_histories_are_refused_in_one_line(tmp_path, terminal, case):
    # Catches: a traceback, an empty picture, a message that does not name the file.
    content, message = BAD_HISTORIES[case]
    path = tmp_path / "run.csv"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = refused_plot(terminal, tmp_path, "vae.pt", "--curves", str(path))
    assert message in line and str(path) in line


# ---------------------------------------------------------------- plot_latents.py: the command line
@pytest.fixture
def small_checkpoint(tmp_path):
    """A checkpoint of a non-default size, as train.py --z-dims 3 --hidden 32 writes it."""
    return save_run(small_vae(hidden=32), tmp_path / "vae.pt")


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_latents.main draws, caught as it makes them."""
    figures = []
    monkeypatch.setattr(
        plot_latents, "Figure", lambda **kwargs: figures.append(Figure(**kwargs)) or figures[-1]
    )
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


@pytest.fixture
def view(tmp_path, small_checkpoint, mnist_dir):
    """view(*flags): plot_cli for small_checkpoint, on the test data."""
    return functools.partial(plot_cli, tmp_path, small_checkpoint, "--data-dir", mnist_dir)


def test_cli_grid_takes_its_flags(view, tmp_path, drawn, capsys):
    # Catches: a grid flag lost, a default name without the dimensions or spacing.
    assert view("--i", "2", "--j", "0", "--n", "3", "--limit", "1.5") == ["latents_2_0.png"]
    assert (tmp_path / "latents_2_0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    quantile = view("--i", "2", "--j", "0", "--spacing", "quantile")
    assert quantile == ["latents_2_0.png", "latents_2_0_quantile.png"]  # the linear one is kept
    expected = plot_latents.plot_latents(small_vae(hidden=32), 2, 0, 3, 1.5)
    assert_same_picture(drawn[0].axes[0], expected)
    assert "noext.png" in view("--out", "noext")
    assert capsys.readouterr().out.endswith("latents_2_0_quantile.png\nwrote noext.png\n")


@pytest.mark.parametrize("spacing", ["linear", "quantile"])
def test_cli_scatter_plots_and_prints_the_posterior(tmp_path, mnist_dir, drawn, capsys, spacing):
    # Catches: flags lost, mu_i and mu_j swapped, a table column computed wrongly.
    model = small_vae(hidden=32)
    with torch.no_grad():
        model.mu.weight.mul_(100)  # means that spread widely, so that wrong figures show
    spread_checkpoint = save_run(model, tmp_path / "spread.pt")
    flags = ["--limit", "1.5"] if spacing == "linear" else ["--spacing", "quantile"]
    name = "spread_scatter_2_1" + ("_quantile.png" if spacing == "quantile" else ".png")
    args = ["--scatter", "--i", "2", "--j", "1", "--n", "3", *flags, "--data-dir", mnist_dir]
    assert plot_cli(tmp_path, spread_checkpoint, *args) == [name]  # named after its checkpoint
    images, labels = train.load_mnist(mnist_dir, train=False)
    mu, logvar = (t.detach() for t in model.encode(images))
    grid, scatter = drawn[0].axes[:2]
    assert_same_picture(grid, plot_latents.plot_latents(model, 2, 1, 3, 1.5, spacing=spacing))
    points = scatter.collections[0]
    np.testing.assert_allclose(points.get_offsets(), mu[:, [2, 1]].numpy(), atol=1e-6)
    np.testing.assert_array_equal(points.get_array(), labels.numpy())
    corner = 1.5 if spacing == "linear" else Normal(0.0, 1.0).icdf(torch.tensor(2.5 / 3)).item()
    square = scatter.patches[0].get_bbox()
    np.testing.assert_allclose(square.extents, [-corner, -corner, corner, corner])
    assert (scatter.get_xlabel(), scatter.get_ylabel()) == ("mu 2", "mu 1")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.fullmatch(r"\s+\d+(\s+[\d.]+){4}", line)]
    table = np.array([[float(v) for v in line.split()] for line in rows])
    var_mu, mean_var = mu.var(0, correction=0).numpy(), logvar.exp().mean(0).numpy()
    assert var_mu.min() > 1  # large enough for a variance correction of 64/63 to show
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).mean(0).numpy()
    columns = np.stack([np.arange(3), var_mu, mean_var, var_mu + mean_var, kl], 1)  # dim first
    np.testing.assert_allclose(table, columns, atol=0.0006, rtol=1e-6)
    total = float(re.search(r"KL per image ([\d.]+)", out).group(1))
    assert total == pytest.approx(train.evaluate(model, images)[1].item(), abs=0.006)
    assert total == pytest.approx(table[:, 4].sum(), abs=0.006)


@pytest.mark.parametrize("recon", [None, "mse", "bce"], ids=["no history", "mse", "binarized bce"])
def test_cli_samples_draw_the_prior_and_reconstructions_and_say_their_error(
    view, small_checkpoint, test_set, drawn, capsys, recon
):
    # Catches: flags lost, the wrong images, an error in other terms than the model's.
    model = small_vae(hidden=32)
    if recon:  # bce on binarized pixels, as for nats
        units = [round(vae.log_likelihood_constant(recon), 4), int(recon == "bce")]
        row = dict(zip(HISTORY_COLUMNS, (1, 50, 45, 5, 49, 44, 5, 1, *units)))
        save_run(model, small_checkpoint, [row])
    assert view("--samples", "--n", "3", "--seed", "4") == ["samples.png"]
    images = train.binarize_once(test_set[0]) if recon == "bce" else test_set[0]
    samples, reconstructions = drawn[0].axes
    assert_same_picture(samples, plot_latents.plot_samples(model, n=3, seed=4))
    assert title(samples).endswith(f"decoded by {small_checkpoint}")
    assert_same_picture(reconstructions, plot_latents.plot_reconstructions(model, images, n=10))
    decoded = model.decoder(model.encode(images)[0]).detach()
    out = capsys.readouterr().out
    for kind, name in (("mse", "squared error"), ("bce", "cross-entropy")):
        printed = re.search(rf"{name} of ([\d.]+)", out)
        assert (printed is not None) == (recon in (None, kind))
        if printed:
            error = vae.reconstruction_loss(decoded, images, kind).item() / len(images)
            assert float(printed.group(1)) == pytest.approx(error, abs=0.006)


def test_cli_interpolate_draws_pairs_of_different_digits(view, test_set, drawn, capsys):
    # Catches: flags lost, pairs of one digit, rows other than the printed pairs.
    assert view("--interpolate", "--n", "4", "--seed", "3") == ["interpolation.png"]
    images, labels = test_set
    printed = re.findall(r"(\d+) \((\d)\) to (\d+) \((\d)\)", capsys.readouterr().out)
    pairs = [[int(v) for v in pair] for pair in printed]
    assert len(pairs) == 6
    assert all(labels[a] == la and labels[b] == lb != la for a, la, b, lb in pairs)
    start, end = [a for a, *_ in pairs], [b for _, _, b, _ in pairs]
    model = small_vae(hidden=32)
    expected = plot_latents.plot_interpolation(model, images[start], images[end], n=4)
    assert_same_picture(drawn[0].axes[0], expected)
    view("--interpolate", "--seed", "4")
    again = re.findall(r"(\d+) \(\d\) to (\d+)", capsys.readouterr().out)
    assert again != [(str(a), str(b)) for a, b in zip(start, end)]


def test_cli_posterior_and_means_draw_the_8_test_images_they_name(view, test_set, drawn, capsys):
    # Catches: flags lost, images other than those named, the decoded means not beside samples.
    images, labels = test_set
    digits = ", ".join(map(str, labels[:8].tolist()))
    model = small_vae(hidden=32)
    assert view("--posterior", "--n", "3", "--seed", "2") == ["posterior.png"]
    expected = plot_latents.plot_posterior_draws(model, images[:8], 3, 2)
    assert_same_picture(drawn[0].axes[0], expected)
    assert f"test images 0 to 7, digits {digits}" in capsys.readouterr().out
    assert view("--means", "--n", "3", "--seed", "2") == ["means.png", "posterior.png"]
    left, right = drawn[1].axes
    assert_same_picture(left, plot_latents.plot_decoded_means(model, images[:8], 3, 2))
    assert_same_picture(right, plot_latents.plot_samples(model, 3, 2))
    assert f"the means of test images 0 to 7, digits {digits}" in capsys.readouterr().out


def test_cli_marginals_draw_each_dimension_up_to_16(view, tmp_path, mnist_dir, drawn, capsys):
    # Catches: a panel missing or of the wrong dimension, a wide model's panels ill chosen.
    view("--marginals")
    assert [ax.get_xlabel() for ax in drawn[0].axes] == [f"latent dimension {k}" for k in range(3)]
    wide = small_vae(z_dims=20, hidden=32)
    with torch.no_grad():
        wide.mu.weight[[3, 17]] *= 50  # two dimensions in use among twenty
    plot_cli(tmp_path, save_run(wide, tmp_path / "wide.pt"), "--marginals", "--data-dir", mnist_dir)
    shown = [ax.get_xlabel() for ax in drawn[1].axes]
    assert len(shown) == 16 and {"latent dimension 3", "latent dimension 17"} <= set(shown)
    assert "the 16 of 20 whose means spread most" in capsys.readouterr().out


def test_cli_aggregate_draws_the_construction_beside_the_most_peaked_dimension_in_use(
    view, tmp_path, small_checkpoint, test_set, drawn, capsys, monkeypatch
):
    # Catches: a checkpoint required; the most spread, or a collapsed but spiky, dimension drawn.
    assert plot_cli(tmp_path, "none.pt", "--aggregate") == ["none_aggregate.png"]
    assert len(drawn[0].axes) == 1 and "the construction alone" in capsys.readouterr().out
    rows = torch.arange(64.0)
    spread = 5 + 3 * torch.randn(64, generator=seeded(0))  # far from 0, Gaussian-like
    collapsed = torch.where(rows < 2, 0.1, 0.0)  # spikiest of all, but not in use
    peaked = torch.where(rows < 8, 2.0, 0.0) * torch.where(rows % 2 == 0, 1.0, -1.0)
    means = torch.stack([spread, collapsed, peaked], 1)
    stats = (means, means.var(0, correction=0), torch.ones(3), torch.ones(3))
    given = []
    monkeypatch.setattr(plot_latents, "posterior_stats", lambda *args: given.append(args) or stats)
    view("--aggregate")
    assert torch.equal(given[0][1], test_set[0])  # the run's own test images
    assert drawn[1].axes[1].get_xlabel() == "latent dimension 2"
    assert f"{small_checkpoint}'s dimension 2: a trained model" in title(drawn[1].axes[1])
    said = "Var[mu] 0.500, E[sigma^2] 1.000, so Var[z] 1.500; kurtosis of the means 8.00"
    assert f"right: dimension 2, {said}" in capsys.readouterr().out


def test_cli_curves_overlay_the_histories_without_mnist_or_checkpoint(tmp_path, drawn, capsys):
    # Catches: a checkpoint or MNIST required, histories not overlaid or not labelled.
    write_histories(tmp_path)
    (tmp_path / "vae.pt").unlink()  # its history is there, the checkpoint is gone
    assert plot_cli(tmp_path, str(tmp_path / "vae.pt"), "--curves") == ["curves.png"]
    labels = [line.get_label() for ax in drawn[0].axes for line in ax.lines]
    assert labels == ["test -ELBO", "train -ELBO", "test recon", "test KL"]
    both = [str(tmp_path / "vae.csv"), str(tmp_path / "ae.csv")]
    plot_cli(tmp_path, "vae.pt", "--curves", *both, "--out", "both.png")
    runs = {line.get_label().split(": ")[0] for ax in drawn[1].axes for line in ax.lines}
    assert runs == set(both) and len(drawn[1].axes[1].lines) == 4
    assert "wrote both.png" in capsys.readouterr().out


def refused_plot(terminal, tmp_path, checkpoint, *flags, code=1):
    """plot_latents.py's one line, once checked that it wrote no picture and ran no code."""
    out = [] if "--out" in flags else ["--out", str(tmp_path / "x.png")]
    line = refused(terminal, "plot_latents.py", "--checkpoint", checkpoint, *out, *flags, code=code)
    assert len(line.replace(checkpoint, "").replace(str(tmp_path), "")) < 250  # one short line
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "code-ran").exists()
    return line


BAD_PLOT_FLAGS = {
    "i equal to j": (["--i", "1", "--j", "1"], "two different"),
    "i past the last dimension": (["--i", "3"], "0 to 2"),
    "a negative j": (["--j", "-1"], "0 to 2"),
    "n of 0": (["--n", "0"], "argument --n"),
    "limit of 0": (["--limit", "0"], "argument --limit"),
    "limit nan": (["--limit", "nan"], "argument --limit"),
    "limit too large": (["--limit", "1e39"], "argument --limit"),
    "a negative seed": (["--seed", "-1"], "argument --seed"),
    "a seed too large": (["--seed", str(2**64)], "argument --seed"),
    "two views": (["--scatter", "--samples"], "not allowed with"),
    "curves and a view": (["--curves", "--posterior"], "not allowed with"),
    "a dataset unknown": (["--dataset", "cifar"], "argument --dataset"),
    "out in a missing folder": (["--out", "nowhere/x.png"], "in a folder that exists"),
    "out a folder": (["--out", "."], "in a folder that exists"),
}


@pytest.mark.parametrize("case", BAD_PLOT_FLAGS)
def test_plot_bad_flags_are_refused(tmp_path, small_checkpoint, monkeypatch, terminal, case):
    # Catches: a nonsense pair plotted, negative indices read from the end, an unwritable --out.
    monkeypatch.chdir(tmp_path)  # where --out's folders lie
    flags, message = BAD_PLOT_FLAGS[case]
    code = 2 if message.startswith(("argument", "not allowed")) else 1
    assert message in refused_plot(terminal, tmp_path, small_checkpoint, *flags, code=code)


def test_cli_refuses_the_resume_state_naming_its_checkpoint(tmp_path, mnist_dir, terminal):
    # Catches: "not this project's VAE" for the .resume.pt that tab completion offers.
    run_train(tmp_path, mnist_dir, "--epochs", "1", "--iwae", "0")
    line = refused_plot(terminal, tmp_path, str(tmp_path / "vae.resume.pt"))
    assert f"keeps for --resume; the checkpoint is {tmp_path / 'vae.pt'}" in line


class RunsCode(str):
    """A pickle that would create the file it names when loaded with weights_only=False."""

    def __reduce__(self):
        return (open, (str(self), "w"))


def holding(state):
    return lambda path: torch.save(state, path)


def running_code(path):
    torch.save({"mu.weight": RunsCode(str(path.parent / "code-ran"))}, path)


EXTRA_ENTRY = {**VAE().state_dict(), "step": torch.tensor(3)}
NOT_A_TENSOR = {**VAE().state_dict(), "mu.bias": [0.0] * 4}
OWN_CLASS = "into your own class in Python and call plot_latents.plot_latents"
BAD_CHECKPOINTS = {  # what makes --checkpoint, and what plot_latents.py's one line says
    "missing": (lambda path: None, "python train.py"),
    "a folder": (os.mkdir, "python train.py"),
    "code that runs when loaded": (running_code, "loads safely"),
    "not a pickle": (lambda path: path.write_bytes(os.urandom(1000)), "loads safely"),
    "another model": (holding(nn.Linear(3, 2).state_dict()), "is not this project's VAE (KeyError"),
    "an extra entry": (holding(EXTRA_ENTRY), 'Unexpected key(s) in state_dict: "step"'),
    "not a tensor": (holding(NOT_A_TENSOR), "not this project's"),
    "one hidden layer": (holding(OwnVAE().state_dict()), OWN_CLASS),  # a student's own class
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_a_checkpoint_not_of_this_project_is_refused_with_what_to_do(tmp_path, terminal, case):
    # Catches: above all, a checkpoint that runs code when loaded; a KeyError that gives no fix.
    make, message = BAD_CHECKPOINTS[case]
    make(tmp_path / "bad.pt")
    assert message in refused_plot(terminal, tmp_path, str(tmp_path / "bad.pt"))


def test_plot_ctrl_c_ends_quietly(tmp_path, small_checkpoint, monkeypatch, terminal):
    # Catches: a traceback when Ctrl-C lands while MNIST loads.
    monkeypatch.setitem(train.DATASETS, "mnist", interrupt)
    flags = ["--checkpoint", small_checkpoint, "--samples", "--out", str(tmp_path / "s.png")]
    status, _, err = terminal("plot_latents.py", *flags)
    assert status == 130 and err.strip() == "plot_latents.py: interrupted"


# ---------------------------------------------------------------- README.md and docs/
def documents():
    """README.md and docs/*.md, with their text."""
    docs = sorted(os.listdir(os.path.join(HERE, "docs")))
    for name in ["README.md"] + [os.path.join("docs", name) for name in docs]:
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            yield name, f.read()


def test_readme_blocks_run_and_the_hand_loop_matches_train_py(data_folder, monkeypatch, capsys):
    # Catches: drifted code blocks, a hand loop whose threads or weights differ from train.py's.
    set_to = threads_set(monkeypatch)
    pattern = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
    blocks = [block for _, text in documents() for block in pattern.findall(text)]
    namespace = {}
    for block in blocks:
        if "by_hand" in block:
            set_to.clear()
        exec(compile(block, "README.md", "exec"), namespace)
        if "by_hand" in block:  # each of its 3 epochs times 1 and 2 threads
            assert set_to[:2] == [1, 2] and set_to.count(1) >= 3 and set_to.count(2) >= 3
    assert len(blocks) >= 3 and "epoch 3  train -ELBO" in capsys.readouterr().out
    by_main = train.main(["--epochs", "3", "--device", "cpu", "--out", "check.pt", "--iwae", "0"])
    assert same_weights(namespace["by_hand"].state_dict(), by_main.state_dict())


def test_readme_pictures_come_from_its_commands_and_links_resolve(data_folder, capsys):
    # Catches: a picture no README command makes, a command that fails, a dead link or picture.
    text = dict(documents())["README.md"]
    commands = re.findall(r"(?:^|`)(python (?:train|plot_latents)\.py[^`\n#]*)", text, re.M)
    for command in dict.fromkeys(command.strip() for command in commands):
        script, *flags = shlex.split(command)[1:]
        (train if script == "train.py" else plot_latents).main(flags)
    assert "nothing left to do" in capsys.readouterr().out  # python train.py, after --epochs 10
    shown = re.findall(r"assets/([\w.]+\.png)", text)
    assert shown and all((data_folder / name).exists() for name in shown), shown
    for name, text in documents():
        for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)|src=\"([^\"]+)\"", text):
            target = next(t for t in target if t)
            where = os.path.join(HERE, os.path.dirname(name), target)
            assert target.startswith("http") or os.path.exists(where), f"{name}: {target}"


FIRST_CELL = """import matplotlib.pyplot as plt
import train, plot_latents
model = train.main(['--epochs', '1', '--device', 'cpu', '--threads', '1'])
images, labels = train.load_mnist('data', train=False)"""
SIDE_BY_SIDE = """fig, (left, right) = plt.subplots(1, 2)
plot_latents.plot_samples(model, ax=left)
mu = plot_latents.posterior_stats(model, images)[0]
plot_latents.plot_posterior_means(mu, labels, ax=right)"""
KERNEL_CELLS = [  # a notebook's cells, how many pictures each must show, and a text it must show
    (FIRST_CELL, 0, "saved vae.pt and vae.csv"),
    ("plot_latents.plot_samples(model)", 1, None),
    ("ax = plot_latents.plot_reconstructions(model, images)", 1, None),
    ("plot_latents.plot_latents(model, spacing='quantile')\nplt.show()", 1, None),
    (SIDE_BY_SIDE, 1, None),
    ("plot_latents.main(['--posterior'])\nplot_latents.main('--curves')", 0, "wrote curves.png"),
    ("train.main(['--zdims', '2'])", 0, "ValueError: train.py: unrecognized arguments: --zdims 2"),
]


def test_in_a_real_jupyter_kernel_each_cell_shows_what_it_should_and_little_is_kept(
    tmp_path, mnist_dir
):
    # Catches: a figure shown twice or not at all, a switched backend, a hidden or piled-up bar.
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    shutil.copytree(mnist_dir, tmp_path / "data")
    sources = [f"import sys\nsys.path.insert(0, {HERE!r})"] + [cell[0] for cell in KERNEL_CELLS]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in sources])
    where = {"metadata": {"path": str(tmp_path)}}
    options = dict(timeout=120, kernel_name="python3", allow_errors=True, resources=where)
    nbclient.NotebookClient(notebook, **options).execute()
    cells = notebook.cells[1:]
    shown = [sum("image/png" in o.get("data", {}) for o in cell.outputs) for cell in cells]
    assert shown == [count for _, count, _ in KERNEL_CELLS]  # pictures
    for cell, (_, _, text) in zip(cells, KERNEL_CELLS):
        errors = [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]
        said = "".join(o.get("text", "") for o in cell.outputs) + "".join(errors)
        assert text is None or text in said, said  # the bad flag: a ValueError, no SystemExit
    assert all(o.get("name") != "stderr" for o in cells[0].outputs)  # epochs under 10 s: no bar
    saved = nbformat.writes(nbformat.v4.new_notebook(cells=[cells[0]]))
    printed = "".join(o.text for o in cells[0].outputs)
    assert len(saved) - len(printed) - len(FIRST_CELL) <= 1000, saved
