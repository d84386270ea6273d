"""Behaviour tests: offline, on the CPU, in well under a minute.

Each test names the bug it is there to catch. MNIST is replaced by a few hundred
synthetic digits written as IDX files, so torchvision's real loading code runs.

    python -m pytest -q
"""
import csv
import errno
import gzip
import io
import math
import os
import re
import shutil
import signal
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
from torchvision import datasets

matplotlib.use("agg")  # tests never open a window, whatever display the machine has
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import plot_latents
import train
from vae import (VAE, iwae_bound, kl_divergence, log_likelihood, log_likelihood_constant, negative_elbo,
                 reconstruction_loss)

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


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layout", [(8, 1, 28, 28), (8, 784)])
def test_forward_is_the_specifications_in_values_and_gradients(mode, layout):
    # Catches: any change to the sampling (order of draws, std from logvar, what is
    # decoded), a forward that decodes mu in eval mode (the README promises a sample
    # there too), and one that blocks a gradient (a detached z, mu or sigma: the
    # reparameterisation trick undone), in either input layout.
    spec = SpecVAE()
    ours = VAE()
    ours.load_state_dict(spec.state_dict())
    x = torch.rand(layout)
    runs = []
    for model in (spec, ours):
        getattr(model, mode)()
        torch.manual_seed(3)
        outputs = model(x)
        negative_elbo(*outputs[:1], x, *outputs[1:]).backward()
        runs.append([*outputs, *(p.grad for p in model.parameters())])
    for a, b in zip(*runs):
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


def test_log_likelihood_is_the_decoders_whole_density():
    # Catches: a normalising constant missing or wrong (448.7 nats for mse), a variance
    # other than 1/2, x and x_prime swapped in the Bernoulli, a sum over the wrong
    # axis, several z per image not broadcast against their images.
    torch.manual_seed(0)
    x_prime = torch.rand(3, 5, 784) * 0.98 + 0.01  # three decodings of each of five images
    x = torch.rand(5, 1, 28, 28)
    binary = (x > 0.5).float()
    gaussian = Normal(x_prime, math.sqrt(0.5)).log_prob(x.reshape(5, 784)).sum(-1)
    bernoulli = torch.distributions.Bernoulli(probs=x_prime).log_prob(binary.reshape(5, 784)).sum(-1)
    torch.testing.assert_close(log_likelihood(x_prime, x, "mse"), gaussian)
    torch.testing.assert_close(log_likelihood(x_prime, binary, "bce"), bernoulli)
    assert log_likelihood_constant("mse") == pytest.approx(392 * math.log(math.pi)) == pytest.approx(448.73, abs=0.01)
    flat = x_prime[0]
    assert -log_likelihood(flat, x).sum() == pytest.approx(
        (reconstruction_loss(flat, x) + 5 * log_likelihood_constant("mse")).item(), rel=1e-6)
    with pytest.raises(ValueError, match="mse"):
        log_likelihood(flat, x, "l1")


def narrow_posteriors(z_dims=3, input_size=784, hidden=32):
    """A small untrained VAE whose posteriors are narrow and off-centre, several nats
    of KL from the prior, and whose decoder leans on z: the ELBO's terms and bounds
    then differ clearly."""
    torch.manual_seed(0)
    model = VAE(z_dims=z_dims, input_size=input_size, num_hidden=hidden)
    with torch.no_grad():
        model.mu.bias.copy_(torch.linspace(-1, 1, z_dims))
        model.logvar.bias.fill_(-3.0)
        model.decoder[0].weight.mul_(3)
    return model


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_iwae_bound_with_one_sample_is_the_elbo(kind):
    # Catches: a log-weight without log p(z) - log q(z|x) or with its sign flipped, the
    # decoder's constant left out, z not drawn from q(z|x) (mu alone, or sigma from
    # logvar wrongly), both layouts not accepted, a generator that is not used, a
    # bound that needs more than the specification's class has.
    model = narrow_posteriors()
    x = torch.rand(5, 1, 28, 28)
    if kind == "bce":
        x = (x > 0.5).float()
    first = iwae_bound(model, x, 1, kind, torch.Generator().manual_seed(7))
    assert first.shape == (5,)
    assert torch.equal(iwae_bound(model, x.reshape(5, 784), 1, kind, torch.Generator().manual_seed(7)), first)
    spec = SpecVAE(z_dims=3, num_hidden=32)  # only the specification's attributes are needed
    spec.load_state_dict(model.state_dict())
    assert torch.equal(iwae_bound(spec, x, 1, kind, torch.Generator().manual_seed(7)), first)
    # One draw: the log-weight log p(x|z) + log p(z) - log q(z|x), from torch.distributions.
    mu, logvar = model.encode(x)
    eps = torch.randn((1, 5, 3), generator=torch.Generator().manual_seed(7))[0]
    z = mu + torch.exp(0.5 * logvar) * eps
    decoded = model.decode(z)
    pixels = x.reshape(5, 784)
    likelihood = (Normal(decoded, math.sqrt(0.5)).log_prob(pixels) if kind == "mse"
                  else torch.distributions.Bernoulli(probs=decoded).log_prob(pixels)).sum(-1)
    weight = likelihood + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(first, weight.detach(), rtol=1e-5, atol=1e-3)
    # Averaged over many draws: -(negative ELBO + the constant), with the KL in closed form.
    draws = 4000
    many = x.reshape(5, 784).repeat(draws, 1)
    bound = iwae_bound(model, many, 1, kind).reshape(draws, 5)
    with torch.no_grad():
        mu, logvar = model.encode(many)
        reconstruction = reconstruction_loss(model.decode(model.reparameterize(mu, logvar)), many, kind) / len(many)
        elbo = -(reconstruction + kl_divergence(mu, logvar) / len(many) + log_likelihood_constant(kind))
    assert kl_divergence(mu, logvar).item() / len(many) > 3  # a KL large enough to miss
    assert bound.mean().item() == pytest.approx(elbo.item(), abs=4 * bound.std().item() / math.sqrt(draws * 5) + 0.05)


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_iwae_bound_rises_with_k_to_log_p_x_by_numerical_integration(kind):
    # Catches: a bound that does not tighten with k (a mean of log-weights, not their
    # log-mean-exp; a wrong ln k), one that overshoots log p(x), the chunks of samples
    # combined wrongly. log p(x) = log of the integral of p(x|z) p(z) over a grid of z,
    # for a model with a 2-dimensional latent and 16 pixels.
    model = narrow_posteriors(z_dims=2, input_size=16, hidden=16)
    with torch.no_grad():  # a wide q(z|x), so that the bound converges in a few thousand samples
        model.logvar.weight.zero_()
        model.logvar.bias.fill_(0.5)
        model.decoder[-2].weight.mul_(3)
    x = torch.rand(4, 16)
    if kind == "bce":
        x = (x > 0.5).float()
    grid = torch.linspace(-8, 8, 801)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)
    with torch.no_grad():
        joint = log_likelihood(model.decoder(z), x, kind) + Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_p_x = torch.logsumexp(joint, 0) + 2 * math.log(grid[1] - grid[0])
    generator = torch.Generator().manual_seed(0)
    elbo = iwae_bound(model, x.repeat(2000, 1), 1, kind, generator).reshape(2000, 4).mean(0)
    ten, hundred = (iwae_bound(model, x.repeat(200, 1), k, kind, generator).reshape(200, 4).mean(0) for k in (10, 100))
    best = iwae_bound(model, x, 20_000, kind, generator)
    with pytest.raises(ValueError, match="at least 1"):
        iwae_bound(model, x, 0, kind)
    assert (elbo < ten).all() and (ten < hundred).all() and (hundred < log_p_x + 0.01).all()
    assert (elbo < log_p_x - 0.3).all()  # the ELBO is clearly loose here
    torch.testing.assert_close(best, log_p_x, atol=0.05, rtol=0)


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
    # Catches: dropping the last batch, averaging per batch instead of per image, the
    # reconstruction and KL terms swapped or mixed.
    images, _ = digits
    model = VAE()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(1)
    terms = train.train_epoch(model, train.make_step(model, optimizer), images, 300)
    torch.manual_seed(1)
    order = torch.randperm(320)
    expected = torch.zeros(2)
    for batch in (order[:300], order[300:]):
        x = images[batch]
        x_prime, mu, logvar = model(x)
        expected += torch.stack([reconstruction_loss(x_prime, x), kl_divergence(mu, logvar)]).detach()
    assert torch.allclose(terms, expected / 320, rtol=1e-4)


def test_binarized_batches_are_drawn_anew_each_time(digits):
    # Catches: grey pixels passed on, pixels binarized once for all epochs, draws with
    # another probability than the intensity, draws that a seed does not repeat.
    image = digits[0][:1]
    copies = image.repeat(320, 1)  # one image, 320 times: the shuffle cannot matter
    batches = []

    def step(x):
        batches.append(x.clone())
        return torch.zeros(2)
    torch.manual_seed(0)
    for _ in range(2):
        train.train_epoch(VAE(), step, copies, 320, binarize=True)
    torch.manual_seed(0)
    train.train_epoch(VAE(), step, copies, 320, binarize=True)
    first, second, again = batches
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second) and torch.equal(first, again)
    assert (first.mean(0) - image[0]).abs().max() < 0.15  # Bernoulli(intensity), on average


def test_the_binary_test_set_is_the_same_in_every_run(tmp_path, mnist_dir, monkeypatch):
    # Catches: a test set binarized from the global random state (so each --seed, or
    # each call, scores on other pixels), or not binarized at all.
    test_images = train.load_mnist(mnist_dir, train=False)[0]
    binary = train.binarize_once(test_images)
    torch.manual_seed(123)
    assert torch.equal(train.binarize_once(test_images), binary)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert (binary.mean() - test_images.mean()).abs() < 0.02
    scored = []
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda model, images, **kw: scored.append(images) or real(model, images, **kw))
    for seed in ("1", "2"):
        run_train(tmp_path, mnist_dir, "--binarize", "--seed", seed, "--epochs", "1", "--iwae", "0")
    assert torch.equal(scored[0], binary) and torch.equal(scored[1], binary)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_buffer_is_sized_from_the_batches_that_occur(tmp_path, mnist_dir, monkeypatch):
    # Catches: a batch buffer sized from --batch-size, which asks a GPU for ~31 GB when
    # --batch-size 10000000 is given for 320 images.
    shapes = []
    real = train.CUDAGraphStep

    def recorded(step, batch_shape, *args):
        shapes.append(batch_shape)
        return real(step, batch_shape, *args)
    monkeypatch.setattr(train, "CUDAGraphStep", recorded)
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path / "vae.pt"), "--epochs", "1",
                "--batch-size", "10000000", "--device", "cuda", "--iwae", "0"])
    assert shapes == [(320, 784)]


def run_in_a_terminal(*command):
    """Run a script as a user watching a terminal does, its output kept in a log:
    stdout a pipe, stderr a pseudo-terminal of 24 rows by 80 columns (tqdm fits its
    bar to the width). Returns the run, with what reached the terminal as its stderr
    (a pipe's, where there is no pseudo-terminal: Windows)."""
    if sys.platform == "win32":
        return subprocess.run([sys.executable, *command], cwd=HERE, capture_output=True, text=True, timeout=120)
    import fcntl
    import pty
    import termios
    terminal, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    run = subprocess.run([sys.executable, *command], cwd=HERE, stdout=subprocess.PIPE, stderr=child_end,
                         text=True, timeout=120)
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
    run.stderr = shown.decode(errors="replace")
    return run


def test_cli_trains_and_saves_a_state_dict(tmp_path, mnist_dir):
    # Catches: a broken command line, a checkpoint the specification's class cannot load,
    # a loss that does not fall, a temporary file left behind, no bound table by default,
    # a progress bar switched off for good (a long epoch would look frozen), and bar
    # frames in the log.
    out = tmp_path / "vae.pt"
    run = run_in_a_terminal("train.py", "--data-dir", mnist_dir, "--out", str(out),
                            "--epochs", "2", "--batch-size", "32", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    losses = [float(v) for v in re.findall(r"train -ELBO ([\d.]+)", run.stdout)]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert "epoch 2/2" in run.stdout and "device: cpu" in run.stdout
    assert "\r" not in run.stdout and "batch" not in run.stdout  # no bar frames in the log
    if sys.platform != "win32":
        assert "batch" in run.stderr and "\r" in run.stderr  # the bar, in the terminal
    assert [row[0] for row in BOUND_ROW.findall(run.stdout)] == ["1", "10", "50"]  # --iwae 50 by default
    state = load(out)
    SpecVAE().load_state_dict(state)
    VAE().load_state_dict(state)
    assert sorted(os.listdir(tmp_path)) == ["vae.csv", "vae.pt"]


def test_same_seed_gives_identical_weights(tmp_path, mnist_dir):
    # Catches: an unseeded generator for the weights, the shuffling or z.
    states = [load(run_train(tmp_path, mnist_dir, "--seed", seed, out=f"{k}.pt"))
              for k, seed in enumerate(["5", "5", "6"])]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["mu.weight"], states[2]["mu.weight"])


def train_by_hand(images, test_images, epochs=2, batch_size=32, lr=1e-3, z_dims=4, hidden=128,
                  beta=1.0, recon="mse", binarize=False, seed=0):
    """What train.py's flags describe, written out from torch and vae.py alone: the
    trained model, and per epoch the figures train.py prints (train loss, its
    reconstruction and KL terms, test -ELBO, its reconstruction and KL terms)."""
    torch.manual_seed(seed)
    model = VAE(z_dims=z_dims, num_hidden=hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if binarize:  # once, from a generator seeded with 0, whatever --seed says
        test_images = torch.bernoulli(test_images, generator=torch.Generator().manual_seed(0))
    figures = []
    for _ in range(epochs):
        terms = torch.zeros(2)
        order = torch.randperm(len(images))
        for start in range(0, len(images), batch_size):
            x = images[order[start:start + batch_size]]
            if binarize:
                x = torch.bernoulli(x)
            x_prime, mu, logvar = model(x)
            reconstruction, kl = reconstruction_loss(x_prime, x, recon), kl_divergence(mu, logvar)
            optimizer.zero_grad()
            (reconstruction + beta * kl).backward()
            optimizer.step()
            terms += torch.stack([reconstruction, kl]).detach()
        train_recon, train_kl = (terms / len(images)).tolist()
        with torch.no_grad():  # the test -ELBO: beta 1, z from a generator seeded with 0
            mu, logvar = model.encode(test_images)
            z = model.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
            test_recon = reconstruction_loss(model.decode(z), test_images, recon).item() / len(test_images)
            test_kl = kl_divergence(mu, logvar).item() / len(test_images)
        figures.append([train_recon + beta * train_kl, train_recon, train_kl,
                        test_recon + test_kl, test_recon, test_kl])
    return model, figures


EPOCH_LINE = re.compile(r"epoch \d+/\d+  train (-ELBO|loss) ([\d.]+) \(recon ([\d.]+) \+ (?:([\d.]+) x )?KL ([\d.]+)\)  "
                        r"test -ELBO ([\d.]+) \(recon ([\d.]+) \+ KL ([\d.]+)\)  [\d.]+s")


def printed_epochs(out):
    """The figures of each epoch line: train loss, recon, KL, test -ELBO, recon, KL."""
    return [[float(m[k]) for k in (2, 3, 5, 6, 7, 8)] for m in EPOCH_LINE.finditer(out)]


@pytest.mark.parametrize("flags, settings", [
    ([], {}),
    (["--epochs", "3", "--batch-size", "50", "--lr", "3e-3", "--z-dims", "3", "--hidden", "32",
      "--beta", "0.5", "--recon", "bce", "--binarize", "--seed", "7"],
     dict(epochs=3, batch_size=50, lr=3e-3, z_dims=3, hidden=32, beta=0.5, recon="bce", binarize=True, seed=7)),
])
def test_train_does_and_prints_what_its_flags_say(tmp_path, mnist_dir, capsys, flags, settings):
    # Catches: any flag ignored or misrouted (each differs from its default in the second
    # case), a wrong printed figure (train loss and its terms, test -ELBO and its terms),
    # a train loss labelled a -ELBO when beta is not 1, a history whose rows are not the
    # printed figures or do not say their units, and a main() that does not return the
    # model it saved.
    path = str(tmp_path / "vae.pt")
    returned = train.main(["--data-dir", mnist_dir, "--out", path, "--epochs", "2",
                           "--batch-size", "32", "--device", "cpu", "--iwae", "0", *flags])
    images, test_images = (train.load_mnist(mnist_dir, train=split)[0] for split in (True, False))
    model, figures = train_by_hand(images, test_images, **settings)
    out = capsys.readouterr().out
    printed = printed_epochs(out)
    np.testing.assert_allclose(printed, figures, atol=0.0051)  # printed with two decimals
    labels = {(m[1], m[4]) for m in EPOCH_LINE.finditer(out)}
    assert labels == ({("loss", "0.5")} if "--beta" in flags else {("-ELBO", None)})
    with open(tmp_path / "vae.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == train.HISTORY_COLUMNS
    assert [int(row[0]) for row in rows[1:]] == list(range(1, len(figures) + 1))
    np.testing.assert_allclose([[float(v) for v in row[1:7]] for row in rows[1:]], printed, atol=0.0051)
    units = (round(log_likelihood_constant(settings.get("recon", "mse")), 4), int(settings.get("binarize", False)))
    assert {(float(row[8]), int(row[9])) for row in rows[1:]} == {units}
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
    first = train.evaluate(model, digits[0])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(train.evaluate(model, digits[0]), first)

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
    ["--recon", "l1"], ["--device", "tpu"], ["--seed", "-1"], ["--seed", str(2**64)],
    ["--iwae", "-1"], ["--threads", "0"],
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


@pytest.mark.parametrize("case", ["missing folder", "a folder", "history a folder", "a .csv", "a .CSV",
                                  "read-only", "unwritable"])
def test_an_out_that_cannot_be_written_is_refused_before_training(tmp_path, mnist_dir, capsys, monkeypatch, case):
    # Catches: an epoch of work, or ten, lost to a checkpoint or a history that cannot be
    # written (the up-front checks deleted or incomplete), a checkpoint named like its
    # own history, and a writability check that trusts os.access, which on Windows says
    # nothing about folders (here it says yes to one that refuses every new file).
    if case == "unwritable" and not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc, a folder that refuses new files even to root")
    (tmp_path / "locked.pt").write_bytes(b"")  # read-only, as Windows marks a file: os.access says so
    monkeypatch.setattr(train.os, "access", lambda path, mode: not str(path).endswith("locked.pt"))
    monkeypatch.setattr(train, "load_mnist", lambda *args, **kwargs: pytest.fail("training was about to begin"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "run.csv").mkdir()
    out, message = {"missing folder": ("missing/vae.pt", "create it first"),
                    "a folder": ("taken", "is a folder"),
                    "history a folder": ("run.pt", "run.csv is a folder"),
                    "a .csv": ("vae.csv", "names the history"),
                    "a .CSV": ("vae.CSV", "names the history"),  # one file with vae.csv where case is ignored
                    "read-only": ("locked.pt", "locked.pt is read-only"),
                    "unwritable": ("/proc/vae.pt", "is not writable")}[case]
    err, _ = exits_with_one_line(capsys, lambda: train.main(["--out", str(tmp_path / out), "--data-dir", mnist_dir]))
    assert message in err


def test_missing_mnist_says_where_to_put_it(tmp_path, capsys, monkeypatch):
    # Catches: torchvision's download traceback instead of a fix. No mirrors: no network.
    monkeypatch.setattr(datasets.MNIST, "mirrors", [])
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, str(tmp_path / "nodata")))
    assert os.path.join(str(tmp_path / "nodata"), "MNIST", "raw") in err
    assert "train-images-idx3-ubyte" in err


@pytest.mark.parametrize("damage", ["cut short", "empty", "gzipped", "a web page"])
def test_a_damaged_mnist_file_is_called_damaged_not_missing(tmp_path, mnist_dir, capsys, monkeypatch, damage):
    # Catches: "not there and could not be downloaded" for files that are there, and a
    # traceback for the other ways torchvision fails on a bad copy.
    monkeypatch.setattr(datasets.MNIST, "mirrors", [])
    shutil.copytree(mnist_dir, tmp_path / "data")
    images = tmp_path / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    whole = images.read_bytes()
    images.write_bytes({"cut short": whole[:5000], "empty": b"", "gzipped": gzip.compress(whole),
                        "a web page": b"<html><body>Not Found</body></html>"}[damage])
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, str(tmp_path / "data")))
    assert "t10k-images-idx3-ubyte" in err and "damaged" in err and "could not be downloaded" not in err


def test_a_data_dir_that_holds_the_files_themselves_says_where_to_point(tmp_path, mnist_dir, capsys):
    # Catches: "MNIST is not in .../MNIST/raw/MNIST/raw" for the commonest mistake, and
    # torchvision's empty folders made inside the user's copy.
    raw = os.path.join(mnist_dir, "MNIST", "raw")
    before = sorted(os.listdir(raw))
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, raw))
    assert "holds the MNIST files themselves" in err and "two levels up" in err
    assert sorted(os.listdir(raw)) == before


def interrupt(*args, **kwargs):
    """Stands for Ctrl-C landing in whatever it replaces."""
    raise KeyboardInterrupt


def on_call(monkeypatch, name, number, instead):
    """Make call number `number` of train.<name> run instead(real, *args, **kwargs)."""
    real, calls = getattr(train, name), []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            return instead(real, *args, **kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(train, name, patched)


def history_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("figure, patched", [("train reconstruction", "train_epoch"), ("test KL", "evaluate")])
def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path, mnist_dir, capsys, monkeypatch, figure, patched):
    # Catches: a NaN model written over good weights, training on after a NaN, a history
    # that records the NaN epoch, a message that blames the train loss for a test figure.
    good = load(run_train(tmp_path, mnist_dir, "--epochs", "1", out="good.pt"))
    capsys.readouterr()
    nan = torch.tensor([1.0, float("nan")] if figure == "test KL" else [float("nan"), 1.0])
    on_call(monkeypatch, patched, 2, lambda real, *args, **kwargs: real(*args, **kwargs) * nan)
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, mnist_dir))
    assert f"the {figure} became nan in epoch 2" in err and "--lr" in err
    kept = load(tmp_path / "vae.pt")
    assert all(torch.equal(kept[k], good[k]) for k in good)
    assert [row["epoch"] for row in history_rows(tmp_path / "vae.csv")] == ["1"]


def press_ctrl_c(real, *args, **kwargs):
    """Ctrl-C as the user presses it, a SIGINT, while whatever it replaces runs."""
    signal.raise_signal(signal.SIGINT)
    return real(*args, **kwargs)


@pytest.mark.parametrize("where, call, held", [
    ("train_epoch", 3, 2), ("save_checkpoint", 3, 3), ("write_history", 3, 3),
    ("sync_folder", 5, 3),  # epoch 3's checkpoint in place, its folder not yet synced
])
def test_ctrl_c_leaves_checkpoint_and_history_in_step(tmp_path, mnist_dir, capsys, monkeypatch, where, call, held):
    # Catches: a traceback on Ctrl-C, a message that misstates what was saved, and a
    # history that runs ahead of or behind its checkpoint, whether Ctrl-C comes while
    # training, or anywhere while the two files are written.
    three = load(run_train(tmp_path, mnist_dir, "--epochs", "3", "--iwae", "0", out="three.pt"))
    two = load(run_train(tmp_path, mnist_dir, "--epochs", "2", "--iwae", "0", out="two.pt"))
    capsys.readouterr()
    on_call(monkeypatch, where, call, interrupt if where == "train_epoch" else press_ctrl_c)
    err, _ = exits_with_one_line(capsys, lambda: run_train(tmp_path, mnist_dir, "--epochs", "3"), code=130)
    assert f"interrupted in epoch 3; {tmp_path / 'vae.pt'} and {tmp_path / 'vae.csv'} hold epoch {held}" in err
    assert same_weights(load(tmp_path / "vae.pt"), {2: two, 3: three}[held])
    expected = history_rows(tmp_path / f"{['', '', 'two', 'three'][held]}.csv")
    kept = history_rows(tmp_path / "vae.csv")
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in kept] == \
           [{k: v for k, v in row.items() if k != "seconds"} for row in expected]


def test_a_new_run_starts_a_new_history(tmp_path, mnist_dir):
    # Catches: rows appended to the previous run's history, so that its epochs repeat.
    run_train(tmp_path, mnist_dir, "--epochs", "3", "--iwae", "0")
    run_train(tmp_path, mnist_dir, "--epochs", "1", "--iwae", "0")
    assert [row["epoch"] for row in history_rows(tmp_path / "vae.csv")] == ["1"]
    table = np.genfromtxt(tmp_path / "vae.csv", delimiter=",", names=True)  # numpy reads it as it is
    assert table.dtype.names == train.HISTORY_COLUMNS and table["epoch"] == 1


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


def test_a_refused_replace_is_tried_again_then_reported(tmp_path, monkeypatch):
    # Catches: a save lost the first time another program (on Windows, a virus scanner or
    # a sync client) briefly holds the old checkpoint; and when it holds it for good, an
    # old checkpoint damaged or a temporary file left behind.
    path = tmp_path / "vae.pt"
    old = VAE()
    train.save_checkpoint(old, str(path))
    real_replace, refusals = os.replace, []

    def held(limit):
        def replace(*args):
            if len(refusals) < limit:
                refusals.append(1)
                raise PermissionError(13, "The process cannot access the file")
            real_replace(*args)
        return replace
    monkeypatch.setattr(train.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(os, "replace", held(2))
    new = VAE()
    train.save_checkpoint(new, str(path))
    assert same_weights(load(path), new.state_dict()) and len(refusals) == 2
    refusals.clear()
    monkeypatch.setattr(os, "replace", held(100))
    with pytest.raises(PermissionError):
        train.save_checkpoint(VAE(), str(path))
    assert same_weights(load(path), new.state_dict())
    assert os.listdir(tmp_path) == ["vae.pt"]


@pytest.mark.parametrize("cpus, threads", [(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (8, 4), (64, 4)])
def test_default_threads_leave_half_the_cpus_to_others(monkeypatch, cpus, threads):
    # Catches: torch's default of every core, whose waits make a step 4 to 70 times
    # slower as soon as another program is busy on one of them.
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(train.os, "cpu_count", lambda: cpus)
    assert train.default_threads() == threads


@pytest.mark.parametrize("flags, threads", [(["--threads", "3"], 3), ([], None)])
def test_threads_are_set_while_training_and_said(tmp_path, mnist_dir, capsys, monkeypatch, flags, threads):
    # Catches: --threads ignored, a device line that does not say the choice, and a
    # notebook left with the thread count of the training it ran.
    threads = threads or train.default_threads()
    seen = []
    on_call(monkeypatch, "train_epoch", 1, lambda real, *args, **kwargs: seen.append(torch.get_num_threads())
            or real(*args, **kwargs))
    before = torch.get_num_threads()
    run_train(tmp_path, mnist_dir, "--epochs", "1", *flags)
    assert seen == [threads] and torch.get_num_threads() == before
    assert f"device: cpu ({threads} thread{'s' if threads > 1 else ''})\n" in capsys.readouterr().out


def test_bound_sizes_are_powers_of_ten_up_to_k():
    # Catches: a table without the largest k asked for, or with a k beyond it.
    assert train.bound_sizes(1) == [1]
    assert train.bound_sizes(10) == [1, 10]
    assert train.bound_sizes(50) == [1, 10, 50]
    assert train.bound_sizes(5000) == [1, 10, 100, 1000, 5000]


BOUND_ROW = re.compile(r"^ +(\d+) +([\d.]+)(?: +([\d.]+))?$", re.M)


@pytest.mark.parametrize("recon", ["mse", "bce"])
def test_iwae_prints_the_table_of_bounds(tmp_path, mnist_dir, capsys, recon):
    # Catches: --iwae ignored, a table of other figures than iwae_table's, rows not on the
    # -ELBO line's scale (or the nats column without the decoder's constant), a wrong gap,
    # and a bound computed on grey pixels when the test set was binarized.
    flags = ["--recon", recon, "--iwae", "20"] + (["--binarize"] if recon == "bce" else [])
    model = train.main(["--data-dir", mnist_dir, "--out", str(tmp_path / "vae.pt"), "--epochs", "2",
                        "--batch-size", "32", "--device", "cpu", *flags])
    out = capsys.readouterr().out
    test_images = train.load_mnist(mnist_dir, train=False)[0]
    if recon == "bce":
        test_images = train.binarize_once(test_images)
    table = train.iwae_table(model, test_images, 20, recon)
    rows = [[float(v) if v else None for v in row] for row in BOUND_ROW.findall(out)]
    constant = log_likelihood_constant(recon)
    assert [row[0] for row in rows] == [1, 10, 20]
    np.testing.assert_allclose([row[1] for row in rows], [table[k] for k in (1, 10, 20)], atol=0.006)
    if recon == "mse":
        np.testing.assert_allclose([row[2] for row in rows], [table[k] - constant for k in (1, 10, 20)], atol=0.006)
    else:
        assert all(row[2] is None for row in rows)
    gap = float(re.search(r"-L_1 - \(-L_20\) = ([\d.]+) nats", out).group(1))
    assert gap == pytest.approx(table[1] - table[20], abs=0.006) and gap > 0
    first = printed_epochs(out)[-1][3]
    assert rows[0][1] - constant == pytest.approx(first, abs=1.0)  # the -ELBO line, from one z per image
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path / "vae.pt"), "--epochs", "1",
                "--batch-size", "32", "--device", "cpu", "--iwae", "0"])
    assert "-L_k" not in capsys.readouterr().out


def test_iwae_table_averages_the_bound_over_images(digits):
    # Catches: a table that is not the mean of -L_k over the images, or is not repeatable.
    torch.manual_seed(0)
    model = VAE(z_dims=3, num_hidden=32)
    images = digits[0][:150]
    table = train.iwae_table(model, images, 10, batch_size=100)
    assert train.iwae_table(model, images, 10, batch_size=100) == table
    generator = torch.Generator().manual_seed(0)
    expected = {k: 0.0 for k in (1, 10)}
    for start in (0, 100):
        for k in expected:
            expected[k] -= iwae_bound(model, images[start:start + 100], k, "mse", generator).sum().item()
    assert table == pytest.approx({k: v / 150 for k, v in expected.items()}, rel=1e-5)


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
    # one whose frames fill a log file or CI's output, and one left on screen after each
    # epoch (or each bound table) instead of erased for the line that follows.
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    model = VAE()
    train.train_epoch(model, train.make_step(model, train.make_optimizer(model, 1e-3)), digits[0])
    train.iwae_table(model, digits[0][:20], 2)
    shown = [name for name, stream in (("stdout", stdout), ("stderr", stderr))
             if stream is not None and "batch" in stream.getvalue()]
    assert shown == ([bar] if bar else [])
    if bar:
        frames = {"stdout": stdout, "stderr": stderr}[bar].getvalue()
        assert frames.count(" 0%|") == 2 and "\n" not in frames  # two bars, each begun at 0%
        assert frames.endswith("\r") and frames.rstrip("\r").split("\r")[-1].strip() == ""


class ClosedPipe(io.StringIO):
    """stdout after its reader has gone, as Windows reports it: OSError EINVAL, not
    BrokenPipeError, on every write."""

    def __init__(self):
        super().__init__()
        self.null = os.open(os.devnull, os.O_WRONLY)

    def write(self, text):
        raise OSError(errno.EINVAL, "Invalid argument")

    def fileno(self):
        return self.null


def test_a_closed_pipe_on_windows_ends_as_on_linux(tmp_path, mnist_dir, small_checkpoint, capsys, monkeypatch):
    # Catches: a traceback (or a message about an invalid argument) when Windows reports
    # the reader of `| head` gone as OSError EINVAL.
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    out = tmp_path / "vae.pt"
    err, _ = exits_with_one_line(capsys, lambda: train.main(["--data-dir", mnist_dir, "--out", str(out)]))
    assert err.strip() == f"train.py: output closed before training began; nothing was saved to {out}"
    with pytest.raises(SystemExit) as stop:
        plot_latents.main(["--checkpoint", small_checkpoint, "--out", str(tmp_path / "grid.png")])
    assert stop.value.code == 1 and capsys.readouterr().err == ""
    assert (tmp_path / "grid.png").exists()


def test_a_folder_given_as_checkpoint_is_named_so_on_windows_too(tmp_path, capsys, monkeypatch):
    # Catches: "does not load safely" for a folder where, as on Windows, opening it
    # raises PermissionError rather than IsADirectoryError.
    def windows_load(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(plot_latents.torch, "load", windows_load)
    err, _ = exits_with_one_line(capsys, lambda: plot_latents.main(["--checkpoint", str(tmp_path)]))
    assert "is a folder" in err


def test_in_a_notebook_main_takes_the_defaults_and_raises_instead_of_exiting(tmp_path, capsys, monkeypatch):
    # Catches: main() parsing the kernel's own arguments (-f kernel-....json) and stopping
    # with "unrecognized arguments"; a bad flag ending in SystemExit, which IPython shows
    # with a warning to use exit(), instead of an exception that carries the one line.
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/run/kernel-1.json"])
    assert train.parse_args() == train.parse_args([])
    assert plot_latents.parse_args() == plot_latents.parse_args([])
    monkeypatch.setattr(sys, "stdout", KernelStream())
    with pytest.raises(ValueError, match=r"^train.py: error: unrecognized arguments: --zdims 2 \(see --help\)$"):
        train.main(["--zdims", "2"])
    with pytest.raises(ValueError, match=r"^plot_latents.py: error: argument --n: must be a positive integer"):
        plot_latents.main(["--n", "0"])
    with pytest.raises(FileNotFoundError, match=r"^no checkpoint at .*none.pt; train one first"):
        plot_latents.main(["--checkpoint", str(tmp_path / "none.pt")])
    monkeypatch.setattr(datasets.MNIST, "mirrors", [])  # no network
    with pytest.raises(FileNotFoundError, match=r"MNIST is not in"):
        train.main(["--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path / "vae.pt")])


def test_flags_given_as_one_string_are_refused_with_the_list_to_give(capsys, monkeypatch):
    # Catches: train.main("--epochs 1") parsed letter by letter into "unrecognized
    # arguments: - - e p o c h s".
    monkeypatch.setattr(sys, "stdout", KernelStream())
    for module in (train, plot_latents):
        with pytest.raises(ValueError, match=re.escape("give the flags as a list, such as ['--epochs', '1']")):
            module.main("--epochs 1")


def test_ctrl_c_in_a_notebook_before_training_returns_nothing_quietly(tmp_path, mnist_dir, capsys, monkeypatch):
    # Catches: "returning the model" said when there is no model yet.
    monkeypatch.setattr(sys, "stdout", KernelStream())
    monkeypatch.setattr(train, "load_mnist", interrupt)
    assert train.main(["--data-dir", mnist_dir, "--out", str(tmp_path / "vae.pt")]) is None
    err = capsys.readouterr().err
    assert "interrupted before training began; nothing was saved" in err and "returning" not in err


def test_ctrl_c_in_a_notebook_returns_the_model_trained_so_far(tmp_path, mnist_dir, capsys, monkeypatch):
    # Catches: SystemExit: 130 in a kernel, which loses the trained model, and a stop that
    # does not say what was saved.
    monkeypatch.setattr(sys, "stdout", KernelStream())
    on_call(monkeypatch, "train_epoch", 2, interrupt)
    model = train.main(["--data-dir", mnist_dir, "--out", str(tmp_path / "vae.pt"), "--device", "cpu"])
    assert isinstance(model, VAE)
    assert same_weights(model.state_dict(), load(tmp_path / "vae.pt"))  # Ctrl-C came as epoch 2 began
    err = capsys.readouterr().err
    assert "interrupted in epoch 2" in err and "hold epoch 1" in err and "returning the model" in err


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


def test_a_grid_of_one_tile_decodes_the_centre():
    # Catches: n = 1 drawing the corner z = (-limit, -limit) with axes off-centre.
    model = VAE(z_dims=3, num_hidden=16)
    ax = plot_latents.plot_latents(model, n=1, limit=2.0)
    np.testing.assert_allclose(picture(ax), model.decoder(torch.zeros(1, 3)).detach().reshape(28, 28), atol=1e-6)
    np.testing.assert_allclose(ax.images[0].get_extent(), [-2, 2, -2, 2])
    assert ax.get_title().endswith("at the centre, z = 0")
    plt.close("all")


def test_quantile_grid_tiles_decode_the_priors_quantiles():
    # Catches: quantiles at k / n or (k + 1) / n instead of the tiles' centres (k + 0.5) / n,
    # a flipped or transposed grid, ticks that name tile numbers instead of z values.
    torch.manual_seed(0)
    model = VAE(z_dims=3, num_hidden=16)
    n, i, j = 5, 1, 2
    ax = plot_latents.plot_latents(model, i=i, j=j, n=n, spacing="quantile")
    values = Normal(0.0, 1.0).icdf((torch.arange(n) + 0.5) / n)
    grid = picture(ax)
    for r in range(n):
        for c in range(n):
            z = torch.zeros(1, 3)
            z[0, i], z[0, j] = values[c], values[n - 1 - r]
            expected = model.decoder(z).detach().reshape(28, 28).numpy()
            np.testing.assert_allclose(grid[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28], expected, atol=1e-5)
    names = [f"{v:.2f}" for v in values.tolist()]
    assert [t.get_text() for t in ax.get_xticklabels()] == names == [t.get_text() for t in ax.get_yticklabels()]
    np.testing.assert_allclose(ax.get_xticks(), np.arange(n) + 0.5)
    np.testing.assert_allclose(ax.images[0].get_extent(), [0, n, 0, n])  # bottom row: the lowest z_j
    assert "quantiles" in ax.get_title()
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
    assert "E[x|z]" in ax.get_title() and "N(0, I)" in ax.get_title()
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


def test_interpolation_decodes_the_mixed_posterior_means_between_the_originals():
    # Catches: points that miss an end (mu(start) or mu(end)) or are not evenly spaced,
    # sampled z instead of the means, the originals not at the row ends, rows out of
    # pair order, a single pair not accepted as one image each.
    torch.manual_seed(0)
    model = VAE(z_dims=3, num_hidden=16)
    start, end = torch.rand(3, 1, 28, 28), torch.rand(3, 784)
    n = 4
    ax = plot_latents.plot_interpolation(model, start, end, n=n)
    got = tiles(picture(ax)).reshape(3, n + 2, 28, 28)
    mu_start, mu_end = model.encode(start)[0].detach(), model.encode(end)[0].detach()
    for row in range(3):
        np.testing.assert_array_equal(got[row, 0], start[row, 0].numpy())
        np.testing.assert_array_equal(got[row, -1], end[row].reshape(28, 28).numpy())
        for k, t in enumerate(np.linspace(0, 1, n)):
            expected = model.decode(mu_start[row] + float(t) * (mu_end[row] - mu_start[row])).detach()
            np.testing.assert_allclose(got[row, k + 1], expected.reshape(28, 28).numpy(), atol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["start", "mu(start)", "mu(end)", "end"]
    one = plot_latents.plot_interpolation(model, start[1, 0], end[1], n=n)
    np.testing.assert_allclose(picture(one), picture(ax)[28:56], atol=1e-6)
    for bad, message in (((start, end[:2]), "as many"), ((start, end * 255), "divide")):
        with pytest.raises(ValueError, match=message):
            plot_latents.plot_interpolation(model, *bad)
    with pytest.raises(ValueError, match="n >= 2"):
        plot_latents.plot_interpolation(model, start, end, n=1)
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


HISTORY = [  # a history as train.py writes it, its figures all different: 3 epochs at --beta 0.5
    dict(zip(train.HISTORY_COLUMNS, row)) for row in (
        (1, 50.0, 45.0, 10.0, 47.0, 40.0, 7.0, 1.5, 448.7325, 0),
        (2, 40.0, 36.0, 8.0, 38.5, 33.0, 5.5, 1.4, 448.7325, 0),
        (3, 35.0, 32.0, 6.0, 34.0, 29.5, 4.5, 1.3, 448.7325, 0))]

PLOTS = {
    "plot_latents": lambda model, ax: plot_latents.plot_latents(model, ax=ax),
    "plot_samples": lambda model, ax: plot_latents.plot_samples(model, ax=ax),
    "plot_reconstructions": lambda model, ax: plot_latents.plot_reconstructions(
        model, torch.rand(10, 784), ax=ax),
    "plot_interpolation": lambda model, ax: plot_latents.plot_interpolation(
        model, torch.rand(2, 784), torch.rand(2, 784), ax=ax),
    "plot_posterior_means": lambda model, ax: plot_latents.plot_posterior_means(
        torch.randn(50, 4), torch.randint(0, 10, (50,)), ax=ax),
    "plot_curves": lambda model, ax: plot_latents.plot_curves(HISTORY, ax=ax),
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
    assert PLOTS[name](model, given) is given and (given.images or given.collections or given.lines)
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
    # the dimensions or the spacing, a switch of the session's backend, sizes assumed
    # not read.
    monkeypatch.setattr(plt, "switch_backend", lambda *args: pytest.fail("backend switched"))
    flags = ["--i", "2", "--j", "0", "--n", "3", "--limit", "1.5"]
    assert plot_cli(tmp_path, small_checkpoint, *flags) == ["latents_2_0.png"]
    assert (tmp_path / "latents_2_0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_cli(tmp_path, small_checkpoint, "--i", "2", "--j", "0", "--spacing", "quantile") == [
        "latents_2_0.png", "latents_2_0_quantile.png"]  # the linear grid's picture is kept
    expected = plot_latents.plot_latents(plot_latents.load_model(small_checkpoint), 2, 0, 3, 1.5)
    assert np.array_equal(picture(drawn[0].axes[0]), picture(expected))
    assert drawn[0].axes[0].images[0].get_extent() == expected.images[0].get_extent()
    plt.close("all")


def parse_table(out):
    """The rows of the --scatter table: dim, Var[mu], E[sigma^2], Var[z], KL."""
    return np.array([[float(v) for v in line.split()]
                     for line in out.splitlines() if re.fullmatch(r"\s+\d+(\s+[\d.]+){4}", line)])


@pytest.fixture
def spread_checkpoint(tmp_path):
    """A checkpoint whose posterior means spread widely (Var[mu] of several units), so
    that a figure computed the wrong way differs from the right one by more than it
    is rounded when printed."""
    path = tmp_path / "spread.pt"
    torch.manual_seed(0)
    model = VAE(z_dims=3, num_hidden=32)
    with torch.no_grad():
        model.mu.weight.mul_(100)
    train.save_checkpoint(model, str(path))
    return str(path)


@pytest.mark.parametrize("flags, corner", [
    (["--n", "3", "--limit", "1.5"], 1.5),
    (["--n", "3", "--spacing", "quantile"], Normal(0.0, 1.0).icdf(torch.tensor(2.5 / 3)).item()),
])
def test_cli_scatter_plots_and_prints_the_posterior(tmp_path, spread_checkpoint, mnist_dir, drawn, capsys,
                                                    flags, corner):
    # Catches: --n, --limit or --spacing not reaching the grid beside the scatter or the
    # dashed square that marks it; mu_i and mu_j on the wrong axes; a table column computed
    # wrongly (Var[mu] with another variance correction among them); a KL column that
    # does not add up to the test KL train.py prints; a name shared with the plain grid.
    name = "scatter_2_1_quantile.png" if "quantile" in flags else "scatter_2_1.png"
    assert plot_cli(tmp_path, spread_checkpoint, "--scatter", "--i", "2", "--j", "1", *flags,
                    "--data-dir", mnist_dir) == [name]
    model = plot_latents.load_model(spread_checkpoint)
    images, labels = train.load_mnist(mnist_dir, train=False)
    with torch.no_grad():
        mu, logvar = model.encode(images)
    grid, scatter = drawn[0].axes[:2]
    spacing = "quantile" if "quantile" in flags else "linear"
    expected = plot_latents.plot_latents(model, 2, 1, 3, 1.5, spacing=spacing)
    assert np.array_equal(picture(grid), picture(expected))
    assert grid.images[0].get_extent() == expected.images[0].get_extent()
    assert grid.get_title() == expected.get_title() and grid.get_ylabel() == "Latent dimension 1"
    np.testing.assert_allclose(scatter.collections[0].get_offsets(), mu[:, [2, 1]].numpy(), atol=1e-6)
    np.testing.assert_array_equal(scatter.collections[0].get_array(), labels.numpy())
    square = scatter.patches[0].get_bbox()
    np.testing.assert_allclose([square.x0, square.y0, square.x1, square.y1], [-corner, -corner, corner, corner])
    assert (scatter.get_xlabel(), scatter.get_ylabel()) == ("mu 2", "mu 1")

    out = capsys.readouterr().out
    table = parse_table(out)
    var_mu, mean_var = mu.var(0, correction=0).numpy(), logvar.exp().mean(0).numpy()
    assert var_mu.min() > 1  # large enough for a variance correction of 64/63 to show
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean(0).numpy()
    np.testing.assert_array_equal(table[:, 0], [0, 1, 2])
    np.testing.assert_allclose(table[:, 1:], np.stack([var_mu, mean_var, var_mu + mean_var, kl], 1),
                               atol=0.0006, rtol=1e-6)
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


def test_cli_interpolate_draws_pairs_of_different_digits(tmp_path, small_checkpoint, mnist_dir, drawn, capsys):
    # Catches: --n or --seed not reaching the rows, pairs of one digit, rows other than
    # the printed pairs, a default name that overwrites another view's PNG.
    assert plot_cli(tmp_path, small_checkpoint, "--interpolate", "--n", "4", "--seed", "3",
                    "--data-dir", mnist_dir) == ["interpolation.png"]
    images, labels = train.load_mnist(mnist_dir, train=False)
    pairs = [[int(v) for v in pair] for pair in re.findall(r"(\d+) \((\d)\) to (\d+) \((\d)\)", capsys.readouterr().out)]
    assert len(pairs) == 6
    assert all(labels[a] == la and labels[b] == lb and la != lb for a, la, b, lb in pairs)
    start, end = [a for a, *_ in pairs], [b for _, _, b, _ in pairs]
    expected = plot_latents.plot_interpolation(plot_latents.load_model(small_checkpoint), images[start], images[end], n=4)
    assert np.array_equal(picture(drawn[0].axes[0]), picture(expected))
    plot_cli(tmp_path, small_checkpoint, "--interpolate", "--seed", "4", "--data-dir", mnist_dir)
    assert re.findall(r"(\d+) \(\d\) to (\d+)", capsys.readouterr().out) != [(str(a), str(b)) for a, b in zip(start, end)]
    plt.close("all")


def write_histories(folder):
    """Two histories as train.py writes them: HISTORY's, and one epoch of another run."""
    train.write_history(str(folder / "vae.csv"), [list(row.values()) for row in HISTORY])
    train.write_history(str(folder / "ae.csv"), [[1, 30.0, 28.0, 90.0, 130.0, 25.0, 105.0, 1.0, 448.7325, 0]])


def test_plot_curves_draws_the_histories_figures_at_their_epochs(tmp_path):
    # Catches: a series in the wrong panel or under the wrong name, values shifted by an
    # epoch, the train loss (recon + beta KL) drawn where the train -ELBO belongs, runs
    # whose two series do not share a colour, labels that do not name the run.
    write_histories(tmp_path)
    left = plot_latents.plot_curves(str(tmp_path / "vae.csv"), label="vae.csv")
    plot_latents.plot_curves(tmp_path / "ae.csv", ax=left, label="ae.csv")
    right = plot_latents.plot_curves(HISTORY, terms=True)
    drawn_lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()), line.get_color())
                   for line in left.lines}
    assert drawn_lines["vae.csv: test -ELBO"][:2] == ([1, 2, 3], [47.0, 38.5, 34.0])
    assert drawn_lines["vae.csv: train -ELBO"][:2] == ([1, 2, 3], [55.0, 44.0, 38.0])
    assert drawn_lines["ae.csv: test -ELBO"][:2] == ([1], [130.0])
    assert drawn_lines["ae.csv: train -ELBO"][:2] == ([1], [118.0])
    assert drawn_lines["vae.csv: test -ELBO"][2] == drawn_lines["vae.csv: train -ELBO"][2] != drawn_lines["ae.csv: test -ELBO"][2]
    assert [t.get_text() for t in left.get_legend().get_texts()] == list(drawn_lines)
    terms = {line.get_label(): list(line.get_ydata()) for line in right.lines}
    assert terms == {"test recon": [40.0, 33.0, 29.5], "test KL": [7.0, 5.5, 4.5]}
    plt.close("all")


def test_curves_say_their_units_and_refuse_to_mix_them(tmp_path):
    # Catches: mse and bce runs drawn on one axis as if their figures compared, an axis
    # that does not say what its figures measure, read_history's columns refused by
    # plot_curves, a history saved by a spreadsheet (with a byte-order mark) refused.
    write_histories(tmp_path)
    ax = plot_latents.plot_curves(plot_latents.read_history(tmp_path / "vae.csv"))
    assert ax.get_ylabel() == "nats per image, less 448.73 (squared error: a Gaussian decoder)"
    terms = plot_latents.plot_curves(HISTORY, terms=True)  # the KL is in plain nats: only the recon is less
    assert terms.get_ylabel() == "nats per image, recon less 448.73 (squared error: a Gaussian decoder)"
    bce = [{**row, "nats_left_out": 0, "binarized": 1} for row in HISTORY]
    with pytest.raises(ValueError, match="draw them apart"):
        plot_latents.plot_curves(bce, ax=ax, label="bce run")
    assert "binarized pixels" in plot_latents.plot_curves(bce).get_ylabel()
    grey = [{**row, "nats_left_out": 0, "binarized": 0} for row in HISTORY]
    assert "not a log-likelihood" in plot_latents.plot_curves(grey).get_ylabel()
    saved = tmp_path / "excel.csv"
    saved.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "vae.csv").read_bytes())
    assert plot_latents.read_history(saved) == plot_latents.read_history(tmp_path / "vae.csv")
    plt.close("all")


def test_cli_curves_overlay_the_histories_without_mnist_or_checkpoint(tmp_path, drawn, capsys):
    # Catches: --curves that needs the checkpoint or MNIST, a default history other than
    # the one beside --checkpoint, several histories not overlaid or not labelled.
    write_histories(tmp_path)
    missing = str(tmp_path / "vae.pt")  # its history is there, the checkpoint is gone
    assert plot_cli(tmp_path, missing, "--curves") == ["curves.png"]
    left, right = drawn[0].axes
    assert [line.get_label() for line in left.lines] == ["test -ELBO", "train -ELBO"]
    assert [line.get_label() for line in right.lines] == ["test recon", "test KL"]
    assert list(left.lines[0].get_ydata()) == [47.0, 38.5, 34.0]
    plot_cli(tmp_path, missing, "--curves", str(tmp_path / "vae.csv"), str(tmp_path / "ae.csv"), "--out", "both.png")
    left, right = drawn[1].axes
    runs = {label.split(": ")[0] for label in (line.get_label() for line in left.lines + right.lines)}
    assert runs == {str(tmp_path / "vae.csv"), str(tmp_path / "ae.csv")} and len(right.lines) == 4
    assert "wrote both.png" in capsys.readouterr().out
    plt.close("all")


@pytest.mark.parametrize("content, message", [
    (None, "no history at"),
    ("", "holds no epochs"),
    (",".join(train.HISTORY_COLUMNS) + "\n", "holds no epochs"),
    ("step,loss\n1,2.0\n", "not a history written by train.py"),
    (",".join(train.HISTORY_COLUMNS) + "\n1,a,b,c,d,e,f,g\n", "not numbers"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe", "not text"),
    ("folder", "is a folder"),
])
def test_bad_histories_are_refused_in_one_line(tmp_path, capsys, content, message):
    # Catches: a traceback from csv or float(), an empty picture for an empty history,
    # a message that does not name the file.
    path = tmp_path / "run.csv"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    err, _ = exits_with_one_line(capsys, lambda: plot_latents.main(["--curves", str(path), "--out", str(tmp_path / "c.png")]))
    assert message in err and str(path) in err
    assert not (tmp_path / "c.png").exists()


def test_cli_out_without_an_extension_says_the_file_it_wrote(tmp_path, small_checkpoint, capsys):
    # Catches: "wrote noext" when savefig wrote noext.png.
    assert plot_cli(tmp_path, small_checkpoint, "--out", "noext") == ["noext.png"]
    assert capsys.readouterr().out == "wrote noext.png\n"


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
    ("good", ["--limit", "1e39"], "--limit"),
    ("good", ["--spacing", "quantile", "--limit", "3"], "--limit applies to the linear grid only"),
    ("good", ["--seed", "-1"], "--seed"),
    ("good", ["--seed", str(2**64)], "--seed"),
    ("good", ["--scatter", "--samples"], "not allowed with"),
    ("good", ["--curves", "--interpolate"], "not allowed with"),
    ("good", ["--samples", "--i", "2"], "--i does not apply to --samples"),
    ("good", ["--interpolate", "--spacing", "quantile"], "--spacing does not apply to --interpolate"),
    ("good", ["--curves", "--n", "3"], "--n does not apply to --curves"),
    ("good", ["--seed", "3"], "--seed does not apply to the grid"),
    ("good", ["--out", "nowhere/x.png"], "does not exist"),
    ("good", ["--out", "folder/"], "is a folder"),
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
    (tmp_path / "folder").mkdir()
    out = ["--out", str(tmp_path / "x.png")] if "--out" not in flags else []
    flags = [str(tmp_path / flag) if flag.startswith(("nowhere/", "folder/")) else flag for flag in flags]
    err, _ = exits_with_one_line(capsys, lambda: plot_latents.main(["--checkpoint", path, *out, *flags]))
    assert message in err and len(err.replace(path, "").replace(str(tmp_path), "")) < 200
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
    namespace, threads = {}, torch.get_num_threads()
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    finally:
        plt.close("all")
        torch.set_num_threads(threads)  # the hand loop sets train.py's count
    assert "epoch 3  train -ELBO" in capsys.readouterr().out
    by_main = train.main(["--epochs", "3", "--device", "cpu", "--out", "check.pt", "--iwae", "0"])
    assert same_weights(namespace["by_hand"].state_dict(), by_main.state_dict())


KERNEL_CELLS = [  # a notebook's cells, how many pictures each must show, and a text it must show
    ("import matplotlib.pyplot as plt\nimport train, plot_latents\n"
     "model = train.main(['--epochs', '1', '--device', 'cpu'])\n"
     "images, labels = train.load_mnist('data', train=False)", 0, "saved vae.pt and vae.csv"),
    ("plot_latents.plot_samples(model)", 1, None),
    ("ax = plot_latents.plot_reconstructions(model, images)", 1, None),
    ("plot_latents.plot_latents(model, spacing='quantile')\nplt.show()", 1, None),
    ("fig, (left, right) = plt.subplots(1, 2)\nplot_latents.plot_samples(model, ax=left)\n"
     "plot_latents.plot_posterior_means(plot_latents.posterior_stats(model, images)[0], labels, ax=right)", 1, None),
    ("plot_latents.plot_interpolation(model, images[:3], images[3:6])", 1, None),
    ("plot_latents.plot_curves('vae.csv')", 1, None),
    ("plot_latents.main(['--samples'])\nplot_latents.main(['--curves'])", 0, "wrote curves.png"),
    ("plot_latents.plot_samples(model)", 1, None),
    ("train.main(['--zdims', '2'])", 0, "ValueError: train.py: error: unrecognized arguments: --zdims 2"),
    ("train.main(['--help'])\nplot_latents.main(['--help'])", 0, "usage: plot_latents.py"),
    ("real, calls = train.train_epoch, []\n"
     "def ctrl_c_in_epoch_2(*args, **kwargs):\n"
     "    calls.append(1)\n"
     "    if len(calls) == 2:\n"
     "        raise KeyboardInterrupt\n"
     "    return real(*args, **kwargs)\n"
     "train.train_epoch = ctrl_c_in_epoch_2\n"
     "kept = train.main(['--epochs', '3', '--device', 'cpu', '--out', 'stopped.pt'])\n"
     "train.train_epoch = real\n"
     "print(type(kept).__name__)", 0, "stopped.csv hold epoch 1; returning the model"),
    ("import matplotlib\nprint(matplotlib.get_backend())", 0, "inline"),
]


def test_in_a_real_jupyter_kernel_each_call_shows_one_picture(notebook_folder):
    # Catches, where nbclient and ipykernel are installed (they are not requirements):
    # a figure shown twice or not at all, a main() that switches the session's backend,
    # a progress bar a notebook hides, a bad flag or --help ending in SystemExit (which
    # IPython shows with a warning to use exit()), and Ctrl-C losing the trained model.
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    sources = [f"import sys\nsys.path.insert(0, {HERE!r})"] + [source for source, _, _ in KERNEL_CELLS]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in sources])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(notebook_folder)}}).execute()
    cells = notebook.cells[1:]
    shown = [sum("image/png" in output.get("data", {}) for output in cell.outputs) for cell in cells]
    assert shown == [pictures for _, pictures, _ in KERNEL_CELLS]
    for cell, (_, _, text) in zip(cells, KERNEL_CELLS):
        said = "".join(o.get("text", "") + (f"{o.ename}: {o.evalue}" if o.output_type == "error" else "")
                       for o in cell.outputs)
        assert "SystemExit" not in said and "To exit" not in said
        assert ("Error" in said) == (text is not None and "Error" in text), said
        assert text is None or text in said, said
    assert any(o.get("name") == "stdout" and "batch" in o.text for o in cells[0].outputs)  # the bar
    assert "VAE\n" in "".join(o.get("text", "") for o in cells[-2].outputs)  # the model trained so far
