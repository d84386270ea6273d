"""Draw a trained VAE: its latent space, the digits it generates, what q(z|x) holds, how it learned.

python plot_latents.py --i 0 --j 1     # the grid: latents_0_1.png
python plot_latents.py --samples       # or --means, --aggregate, --scatter, --posterior, ...

The functions take any model with the specification's four parts, encoder, mu, logvar and
decoder; they draw on ax if given (else on a new figure) and return the Axes, as pandas and
seaborn do. None calls plt.show().
"""

import csv
import math
import os
import sys
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

from train import DATASETS, ArgumentParser, beside, binarize_once, checked, load_mnist
from vae import VAE, encode, kl_divergence, reconstruction_loss, reparameterize


@torch.no_grad()
def plot_latents(model, i=0, j=1, n=10, limit=2.0, ax=None, spacing="linear"):
    """The specification's traversal: n x n decoded digits, z_i rising along the columns and z_j up
    the rows, the other dimensions at 0; the ticks read in z units."""
    z_dims = code_size(model)
    check_dim("i", i, z_dims)
    check_dim("j", j, z_dims)
    if i == j:
        raise ValueError(f"i and j are both {i}: pick two different latent dimensions")
    values = grid_values(n, limit, spacing)
    z = torch.zeros(n, n, z_dims)
    z[:, :, i] = values
    z[:, :, j] = values.flip(0)[:, None]  # row 0 is the top of the picture: the largest z_j
    ax = axes_or_new(ax, (8, 8))
    decoded = decode(model, z.reshape(n * n, z_dims))
    if spacing == "linear":  # each tile's centre at its z value
        half = limit / (n - 1) if n > 1 else limit
        low = values[0].item() - half
        high = values[-1].item() + half
        show_tiles(ax, decoded, n, extent=(low, high, low, high))
        where = f"over [-{limit:g}, {limit:g}]" if n > 1 else "at the centre, z = 0"
    else:  # tiles one unit wide, their centres ticked with their z
        show_tiles(ax, decoded, n, extent=(0, n, 0, n))
        ticks = range(0, n, math.ceil(n / 10))
        ax.set_xticks([k + 0.5 for k in ticks], [f"{values[k]:.2f}" for k in ticks])
        ax.set_yticks([k + 0.5 for k in ticks], [f"{values[k]:.2f}" for k in ticks])
        where = "at the prior's quantiles"
    ax.set_xlabel(f"Latent dimension {i}")
    ax.set_ylabel(f"Latent dimension {j}")
    set_title(ax, f"Latent space traversal for dimensions {i} and {j} {where}, the others at 0")
    return ax


def check_dim(name, dim, z_dims):
    if not 0 <= dim < z_dims:
        raise ValueError(f"{name} = {dim} is not a latent dimension here: use 0 to {z_dims - 1}")


def grid_values(n, limit=2.0, spacing="linear"):
    """The grid's n values, ascending: evenly over [-limit, limit] (n = 1: the centre), or at the
    prior's quantiles (k + 0.5) / n, each tile an equal share of N(0, 1)."""
    if spacing not in ("linear", "quantile"):
        raise ValueError(f'spacing must be "linear" or "quantile", not {spacing!r}')
    if spacing == "quantile":
        return torch.special.ndtri((torch.arange(n) + 0.5) / n)
    if n == 1:
        return torch.zeros(1)
    return torch.linspace(-limit, limit, n)


@torch.no_grad()
def plot_samples(model, n=10, seed=0, ax=None):
    """What the VAE generates: n x n codes z ~ N(0, I) from a CPU generator seeded with seed (the
    same z on any device), each decoded to the mean of p(x|z), E[x|z]: a draw from p(x|z) would add
    independent noise of variance 1/2 to every pixel."""
    z = torch.randn(n * n, code_size(model), generator=torch.Generator().manual_seed(seed))
    ax = axes_or_new(ax, (8, 8))
    show_tiles(ax, decode(model, z), n)
    ax.set_axis_off()
    set_title(ax, f"Decoded means E[x|z] of {n * n} codes z drawn from the prior N(0, I)")
    return ax


@torch.no_grad()
def plot_decoded_means(model, images, n=10, seed=0, ax=None):
    """Decoding only the means (question 2a): n x n draws from the images' posterior means mu(x),
    each decoded, drawn with a CPU generator seeded with seed. N images give N pictures at most."""
    x = as_images(images, model)
    draws = torch.randint(len(x), (n * n,), generator=torch.Generator().manual_seed(seed))
    picks = draws.sort().values  # in order, so that the repeats stand side by side
    means = encode(model, x)[0]
    ax = axes_or_new(ax, (8, 8))
    show_tiles(ax, decode(model, means[picks.to(means.device)]), n)
    ax.set_axis_off()
    set_title(ax, f"decode(mu(x)) of {n * n} draws from {len(x)} images' means: none new")
    return ax


@torch.no_grad()
def plot_reconstructions(model, images, n=10, ax=None):
    """The first n images (pixels in [0, 1]) above their reconstructions decode(mu): the same every
    time, unlike forward's, which decode a sample z ~ q(z|x)."""
    x = as_images(images, model)
    if not 1 <= n <= len(x):
        raise ValueError(f"need 1 <= n <= {len(x)}, the number of images; got n = {n}")
    ax = axes_or_new(ax, (n, 2.4))
    show_tiles(ax, torch.cat([x[:n], decode(model, encode(model, x[:n])[0])]), n)
    label_tiles(ax, 2, {0: "image", 1: "decode(mu)"}, rows=True)
    set_title(ax, "Test images and their reconstructions")
    return ax


@torch.no_grad()
def plot_interpolation(model, start, end, n=10, ax=None):
    """Straight lines in latent space: for each pair of images (one each, or batches of as many),
    the start image, n decodings evenly spaced from mu(start) to mu(end), and the end image."""
    start = as_images(start, model)
    end = as_images(end, model)
    if n < 2:
        raise ValueError(f"need n >= 2 points, the two ends at least; got n = {n}")
    a = encode(model, start)[0]
    b = encode(model, end)[0]
    steps = torch.linspace(0, 1, n, device=a.device)[None, :, None]
    line = a[:, None] + steps * (b - a)[:, None]
    decoded = decode(model, line.flatten(end_dim=1)).reshape(len(a), n, -1)
    rows = torch.cat([start[:, None], decoded, end[:, None]], dim=1)
    ax = axes_or_new(ax, (n + 2, 1.2 * len(start) + 0.6))
    show_tiles(ax, rows.flatten(end_dim=1), n + 2)
    label_tiles(ax, n + 2, {0: "start", 1: "mu(start)", n: "mu(end)", n + 1: "end"})
    set_title(ax, f"Decoded means on straight lines from mu(start) to mu(end), {n} points")
    return ax


@torch.no_grad()
def plot_posterior_draws(model, images, n=10, seed=0, ax=None):
    """What q(z|x) holds: a row per image, then decode(mu) and the decoded means of n codes
    z ~ q(z|x), drawn from a CPU generator seeded with seed."""
    x = as_images(images, model)
    mu, logvar = (t.cpu()[:, None].expand(-1, n, -1) for t in encode(model, x))
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(seed))
    draws = decode(model, z.flatten(end_dim=1)).reshape(len(x), n, -1)
    rows = torch.cat([x[:, None], decode(model, mu[:, 0])[:, None], draws], dim=1)
    ax = axes_or_new(ax, (n + 2, 1.2 * len(x) + 0.6))
    show_tiles(ax, rows.flatten(end_dim=1), n + 2)
    label_tiles(ax, n + 2, {0: "image", 1: "decode(mu)", 1.5 + n / 2: f"{n} draws z ~ q(z|x)"})
    set_title(ax, f"Each image, decode(mu), and {n} codes drawn from q(z|x) decoded")
    return ax


@torch.no_grad()
def plot_marginals(model, images, dim=0, ax=None):
    """Latent dimension dim over the images (question 2b): densities of the means mu_dim(x) and of
    a code z_dim ~ q(z|x) per image (the aggregate posterior q(z); a CPU generator seeded with 0)
    beside N(0, 1), with their variances."""
    mu, logvar = (t.cpu() for t in encode(model, as_images(images, model)))
    check_dim("dim", dim, mu.shape[1])
    codes = reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    ax = axes_or_new(ax, (6, 4))
    draw_densities(ax, mu[:, dim].numpy(), codes[:, dim].numpy())
    ax.set_xlabel(f"latent dimension {dim}")
    set_title(ax, f"Dimension {dim} over {len(mu)} images")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.5)  # room for the legend
    return ax


def plot_aggregate_construction(s=0.5, n=100_000, seed=0, ax=None):
    """Question 2b's counterexample, with no model: half the images' posteriors N(0, 1), half
    N(m, s^2) with m ~ N(0, 1 - s^2). One code z per image is then exactly N(0, 1), while the
    means are a spike at 0 beside a Gaussian."""
    generator = torch.Generator().manual_seed(seed)
    collapsed = torch.arange(n) < n // 2
    means = torch.where(collapsed, 0.0, math.sqrt(1 - s**2) * torch.randn(n, generator=generator))
    codes = means + torch.where(collapsed, 1.0, s) * torch.randn(n, generator=generator)
    ax = axes_or_new(ax, (6, 4))
    draw_densities(ax, means.numpy(), codes.numpy())
    ax.set_xlabel("z")
    set_title(
        ax, f"Means half at 0 (sigma 1), half N(0, {1 - s**2:g}) (sigma {s:g}): q(z) = N(0, 1)"
    )
    ax.set_ylim(0, 1)  # the spike at 0, half the means, reaches far above
    return ax


def draw_densities(ax, means, codes):
    """Histograms of the means and of the codes, with their variances, against N(0, 1) and against
    the Gaussian of the means' own mean and variance (question 2b: are the means Gaussian?)."""
    t = np.linspace(min(means.min(), codes.min(), -4), max(means.max(), codes.max(), 4), 81)
    for values, name in ((codes, "codes z"), (means, "means mu(x)")):
        ax.hist(values, t, density=True, alpha=0.4, label=f"{name}, variance {values.var():.3f}")
    ax.plot(t, normal_density(t, 0, 1), "k--", label="N(0, 1)")
    if means.var() > 1e-6:  # not a point
        fitted = normal_density(t, means.mean(), means.var())
        ax.plot(t, fitted, "r:", label="the means' Gaussian fit")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")


def normal_density(t, mean, variance):
    return np.exp(-((t - mean) ** 2) / (2 * variance)) / np.sqrt(2 * np.pi * variance)


@torch.no_grad()
def posterior_stats(model, images):
    """(mu, var_mu, mean_sigma2, kl): the posterior means mu(x), (N, z_dims), and per dimension
    Var[mu], E[sigma^2] (q(z) has variance their sum, by the law of total variance) and the mean
    KL(q(z_k|x) || N(0, 1)), whose sum is the ELBO's KL."""
    mu, logvar = encode(model, as_images(images, model))
    kl = torch.stack([kl_divergence(mu[:, k], logvar[:, k]) for k in range(mu.shape[1])])
    return mu, mu.var(dim=0, correction=0), logvar.exp().mean(dim=0), kl / len(mu)


def plot_posterior_means(mu, labels, i=0, j=1, limit=2.0, ax=None, classes=None):
    """The posterior means (mu_i, mu_j), coloured by digit (or by the names in classes), with the
    square [-limit, limit]^2 whose corners are the traversal grid's outer tiles (none for 0)."""
    ax = axes_or_new(ax, (8, 8))
    x = mu[:, i].cpu().numpy()
    y = mu[:, j].cpu().numpy()
    # No antialiasing: 10,000 markers then take a few colours, and the PNG stays small.
    style = dict(cmap="tab10", vmin=-0.5, vmax=9.5, s=6, linewidths=0, antialiased=False)
    points = ax.scatter(x, y, c=labels.cpu().numpy(), **style)
    if limit > 0:
        side = 2 * limit
        square = Rectangle((-limit, -limit), side, side, fill=False, linestyle="--", edgecolor="k")
        ax.add_patch(square).set_label("grid of the traversal")
        ax.legend(loc="upper right")
    bar = ax.figure.colorbar(points, ax=ax, ticks=range(10))
    bar.ax.set_title("class" if classes else "digit", fontsize="small")
    bar.ax.tick_params(labelsize="small")
    if classes:
        bar.set_ticklabels(classes)
    ax.set_aspect("equal")
    ax.set_xlabel(f"mu {i}")
    ax.set_ylabel(f"mu {j}")
    set_title(ax, "Posterior means of the test images")
    return ax


def plot_curves(history, ax=None, terms=False, label=None):
    """How a run learned: the test -ELBO beside the training -ELBO, or with terms the test -ELBO's
    two terms; label names the run, to overlay others in the same units on ax."""
    columns = read_history(history, label)
    units = history_units(columns, terms)
    drawn = ax.get_ylabel() if ax is not None else ""
    if drawn not in ("", units) and OWN_UNITS not in (drawn, units):
        this = units.replace("\n", " ")
        other = drawn.replace("\n", " ")
        raise ValueError(f"{label or 'this history'} is in {this}, the curves drawn in {other}")
    if terms:
        series = {"test recon": columns.get("test_recon"), "test KL": columns.get("test_kl")}
    else:
        train_nelbo = summed(columns, "train_recon", "train_kl")  # whatever beta Adam used
        test_nelbo = columns.get("test_nelbo") or summed(columns, "test_recon", "test_kl")
        train_loss = None if train_nelbo else columns.get("train_loss")
        series = {"test -ELBO": test_nelbo, "train -ELBO": train_nelbo, "train loss": train_loss}
    if not any(series.values()):
        wanted = "test_recon, test_kl" if terms else "test_nelbo, train_recon and train_kl"
        raise ValueError(f"{label or 'the history'} has none of the figures to draw: {wanted}")
    ax = axes_or_new(ax, (7, 5))
    color = None  # one colour per run, a line style per series: test solid, the rest broken
    for (name, values), style in zip(series.items(), ("-", ":" if terms else "--", "--")):
        if values:
            name = f"{label}: {name}" if label else name
            line = ax.plot(columns["epoch"], values, style, color=color, marker=".", label=name)
            color = line[0].get_color()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(units)
    set_title(ax, "The test -ELBO's two terms" if terms else "-ELBO per image, test and training")
    ax.legend()
    return ax


def summed(columns, a, b):
    if a not in columns or b not in columns:
        return None
    return [x + y for x, y in zip(columns[a], columns[b])]


# A history's columns: train.py writes them all, and a loop of one's own may write some.
COLUMNS = ("epoch", "train_loss", "train_recon", "train_kl", "test_nelbo", "test_recon", "test_kl")
UNIT_COLUMNS = ("nats_left_out", "binarized")  # what the figures measure: see history_units
OWN_UNITS = "per image, in the history's own units"


def read_history(history, name=None):
    """{column: values} from a history: a CSV's path, rows, columns or a DataFrame, with an epoch
    column and some of COLUMNS; the figures as floats, and the dataset's name where it is given."""
    if isinstance(history, (str, os.PathLike)):
        name = name or os.fspath(history)
        history = read_csv(history, name)
    name = name or "the history given"
    if hasattr(history, "to_dict"):  # a pandas DataFrame
        history = history.to_dict("list")
    if isinstance(history, dict):  # columns: turn them into rows
        history = [dict(zip(history, values)) for values in zip(*history.values())]
    rows = list(history)
    if not rows:
        raise ValueError(f"{name} holds no epochs: it is empty, or its run stopped before one did")
    present = [column for column in COLUMNS + UNIT_COLUMNS if column in rows[0]]
    if "epoch" not in present or len(present) < 2:
        raise ValueError(f"{name} is not a history: it needs a column epoch and some of {COLUMNS}")
    try:
        columns = {column: [float(row[column]) for row in rows] for column in present}
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a history: some figures are not numbers") from None
    if "dataset" in rows[0]:
        columns["dataset"] = [row["dataset"] for row in rows]
    return columns


def read_csv(path, name):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: as spreadsheets save it
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise FileNotFoundError(f"no history at {name}; train.py writes one") from None
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not a history: it is not text") from None


def history_units(columns, terms=False):
    """What a history's figures measure, from its unit columns (they depend on --recon and
    --binarize) and its dataset."""
    if "nats_left_out" not in columns or "binarized" not in columns:
        return OWN_UNITS
    left_out = columns["nats_left_out"][0]
    if left_out:
        units = f"nats per image, {'recon ' * terms}less {left_out:.2f}\n(squared error: Gaussian)"
    elif columns["binarized"][0]:
        units = "nats per image\n(binarized pixels: Bernoulli)"
    else:
        units = "cross-entropy per image\n(grey pixels: not a likelihood)"
    dataset = columns.get("dataset", ["mnist"])[0]  # train.py's histories from before --dataset
    return f"{DATASETS[dataset].__name__}: {units}"


def load_model(path):
    """This project's VAE on the CPU, sized from the state_dict at path (train.py's, or the
    specification's loop's)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}; train one first: python train.py")
    try:  # weights_only: a checkpoint from someone else holds tensors, never code that runs
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise ValueError(f"{path} is not a state_dict that loads safely (tensors only)") from None
    if "optimizer" in state:  # the .resume.pt beside a checkpoint
        checkpoint = path.removesuffix(".resume.pt") + ".pt"
        raise ValueError(
            f"{path} is what train.py keeps for --resume; the checkpoint is {checkpoint}"
        )
    try:
        pixels, hidden = state["encoder.0.weight"].shape[::-1]
        model = VAE(state["mu.weight"].shape[0], pixels, hidden)
        model.load_state_dict(state)
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as error:
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[-1].strip()[:70]}"
        own = "load it into your own class in Python and call plot_latents.plot_latents(model)"
        raise ValueError(
            f"{path} is not this project's VAE ({reason}); to plot it, {own}"
        ) from None
    return model.eval()


PARTS = ("encoder", "mu", "logvar", "decoder")  # all that the functions use of a model


def code_size(model):
    """The latent dimensions, from the mu layer, of a model with the four PARTS; the model is put
    in eval mode."""
    missing = " and ".join(part for part in PARTS if not hasattr(model, part))
    if missing:
        raise TypeError(
            f"{type(model).__name__} has no {missing}; a VAE's four parts are {', '.join(PARTS)}"
        )
    model.eval()
    return [m for m in model.mu.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def decode(model, z):
    """The decoder's pixel means for codes z (N, z_dims), as (N, pixels), on the model's device."""
    return model.decoder(z.to(next(model.parameters()).device)).flatten(start_dim=1)


def as_images(images, model):
    """Images in any layout as (N, pixels) on the model's device, refusing pixels outside [0, 1];
    the pixels counted by decoding one code."""
    pixels = decode(model, torch.zeros(1, code_size(model))).shape[1]
    x = torch.as_tensor(images).float().reshape(-1, pixels)
    if x.min() < 0 or x.max() > 1:
        raise ValueError("pixels must lie in [0, 1], as in training; divide 0 to 255 by 255")
    return x.to(next(model.parameters()).device)


def axes_or_new(ax, size):
    """ax, or the Axes of a new pyplot figure of size inches, which Jupyter shows once."""
    return ax if ax is not None else plt.figure(figsize=size).add_subplot()


def set_title(ax, title):
    """The title, wrapped to the Axes' width, so that titles side by side stay apart."""
    points = ax.get_position().width * ax.figure.get_figwidth() * 72
    width = max(20, int(points / 7))
    ax.set_title(textwrap.fill(title, width, break_long_words=False, break_on_hyphens=False))


def show_tiles(ax, images, cols, **kwargs):
    """Flat square images, cols to a row, as one picture: 0 black, 1 white, pixels sharp."""
    side = math.isqrt(images.shape[1])
    grid = make_grid(images.reshape(-1, 1, side, side).cpu(), nrow=cols, padding=0)[0]
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kwargs)


def label_tiles(ax, count, names, rows=False):
    """Name tiles {index: name} along the picture's count columns (or rows), with no other ticks;
    the columns' names upright, so that narrow tiles keep them apart."""
    side = ax.images[0].get_array().shape[0 if rows else 1] / count
    ticks = [(k + 0.5) * side - 0.5 for k in names]
    if rows:
        ax.set_yticks(ticks, list(names.values()))
        ax.set_xticks([])
    else:
        ax.set_xticks(ticks, list(names.values()), rotation=90)
        ax.set_yticks([])
    ax.tick_params(length=0)


# ---------------------------------------------------------------- the command line: a view each


def load_run(args):
    """The checkpoint's model, the test images (binarized as train.py scored them) and labels of
    the data set it was trained on, and the history beside it ({} without one)."""
    model = load_model(args.checkpoint)
    try:
        run = read_history(beside(args.checkpoint, ".csv"))
    except (OSError, ValueError):
        run = {}
    dataset = run.get("dataset", [args.dataset or "mnist"])[0]
    if args.dataset not in (None, dataset):
        fix = "leave --dataset out, to draw it against its own test images"
        raise ValueError(
            f"--dataset {args.dataset}: {args.checkpoint} was trained on {dataset}; {fix}"
        )
    images, labels = load_mnist(args.data_dir, train=False, dataset=dataset)
    if run.get("binarized", [0])[0]:
        images = binarize_once(images)
    return model, images, labels, run


def class_names(run):
    """The names of the labels 0 to 9 in the run's data set: None for MNIST's digits."""
    dataset = run.get("dataset", ["mnist"])[0]
    return None if dataset == "mnist" else DATASETS[dataset].classes


def view_latents(fig, args):
    """the specification's grid of decoded digits over two latent dimensions"""
    fig.set_size_inches(8, 8)
    model = load_model(args.checkpoint)
    plot_latents(model, args.i, args.j, args.n, args.limit, fig.add_subplot(), args.spacing)
    return []


def view_scatter(fig, args):
    """the test images' posterior means beside the grid, and the table of q(z)"""
    model, images, labels, run = load_run(args)
    mu, var_mu, mean_sigma2, kl = posterior_stats(model, images)
    fig.set_size_inches(14, 7)
    left, right = fig.subplots(1, 2)
    plot_latents(model, args.i, args.j, args.n, args.limit, left, args.spacing)
    corner = grid_values(args.n, args.limit, args.spacing)[-1].item()
    plot_posterior_means(mu, labels, args.i, args.j, corner, right, class_names(run))
    law = "by the law of total variance Var[z] = Var[mu] + E[sigma^2], about 1 if q(z) is N(0, I)"
    lines = [
        f"\nq(z) on {len(images)} test images: {law}",
        "  dim  Var[mu]  E[sigma^2]  Var[z]     KL",
    ]
    for dim, (spread, width, divergence) in enumerate(zip(var_mu, mean_sigma2, kl)):
        lines.append(
            f"  {dim:3d}  {spread:7.3f}  {width:10.3f}  {spread + width:6.3f}  {divergence:5.3f}"
        )
    total = kl.sum().item()
    return [*lines, f"KL per image {total:.2f}: the column's sum, the test KL train.py printed"]


@torch.no_grad()
def view_samples(fig, args):
    """decoded codes from the prior N(0, I), test images and reconstructions below"""
    model, images, _, run = load_run(args)
    fig.set_size_inches(8, 9.3)
    top, bottom = fig.subplots(2, 1, height_ratios=[5, 1])
    plot_samples(model, args.n, args.seed, top)
    set_title(top, f"{top.get_title()}, decoded by {args.checkpoint}")
    plot_reconstructions(model, images, 10, bottom)
    decoded = model.decoder(encode(model, images)[0])
    recon = {448.7341: "mse", 0: "bce"}.get(run.get("nats_left_out", [None])[0])
    errors = []
    for kind, name in (("mse", "a squared error"), ("bce", "a cross-entropy")):
        if recon in (None, kind):  # the model's own terms, or both when they are unknown
            error = reconstruction_loss(decoded, images, kind).item() / len(images)
            errors.append(f"{name} of {error:.2f}")
    errors = " and ".join(errors)
    return [f"decode(mu) reconstructs the {len(images)} test images with {errors} per image"]


def view_means(fig, args, count=8):
    """decoded means of 8 test images beside decoded prior codes (question 2a)"""
    model, images, labels, run = load_run(args)
    fig.set_size_inches(14, 7.6)
    left, right = fig.subplots(1, 2)
    plot_decoded_means(model, images[:count], args.n, args.seed, left)
    plot_samples(model, args.n, args.seed, right)
    return [f"left: the means of test images 0 to {count - 1}, {named(labels[:count], run)}"]


def view_aggregate(fig, args):
    """q(z) = N(0, 1) with means that are not Gaussian, beside the model's (2b)"""
    if not os.path.exists(args.checkpoint):
        fig.set_size_inches(6, 4.5)
        plot_aggregate_construction(ax=fig.add_subplot())
        return [f"no checkpoint at {args.checkpoint}: the construction alone"]
    model, images, _, _ = load_run(args)
    means, var_mu, mean_sigma2, _ = posterior_stats(model, images)
    kurtosis = ((means - means.mean(0)) ** 4).mean(0) / var_mu**2  # 3 for a Gaussian
    dim = int(torch.where(var_mu > 0.05, kurtosis, 0).argmax())
    fig.set_size_inches(12, 4.5)
    left, right = fig.subplots(1, 2)
    plot_aggregate_construction(ax=left)
    plot_marginals(model, images, dim, right)
    set_title(right, f"{args.checkpoint}'s dimension {dim}: a trained model, an illustration")
    spread = var_mu[dim].item()
    width = mean_sigma2[dim].item()
    figures = f"Var[mu] {spread:.3f}, E[sigma^2] {width:.3f}, so Var[z] {spread + width:.3f}"
    peaked = f"kurtosis of the means {kurtosis[dim]:.2f} (3 for a Gaussian)"
    return [f"right: dimension {dim}, {figures}; {peaked}"]


def view_interpolation(fig, args, pairs=6):
    """straight lines between the codes of test images of different classes"""
    model, images, labels, run = load_run(args)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    half = len(order) // 2
    different = labels[order[:half]] != labels[order[half : 2 * half]]
    start = order[:half][different][:pairs]
    end = order[half : 2 * half][different][:pairs]
    fig.set_size_inches(args.n + 2, 1.2 * len(start) + 0.6)
    plot_interpolation(model, images[start], images[end], args.n, fig.add_subplot())
    names = class_names(run) or range(10)
    lines = [
        f"{a} ({names[labels[a]]}) to {b} ({names[labels[b]]})"
        for a, b in zip(start.tolist(), end.tolist())
    ]
    return ["rows, top to bottom: test images " + ", ".join(lines)]


def view_posterior(fig, args, count=8):
    """test images, decode(mu) and decoded draws z ~ q(z|x)"""
    model, images, labels, run = load_run(args)
    fig.set_size_inches(args.n + 2, 1.2 * count + 0.6)
    plot_posterior_draws(model, images[:count], args.n, args.seed, fig.add_subplot())
    return [f"rows, top to bottom: test images 0 to {count - 1}, {named(labels[:count], run)}"]


def named(labels, run):
    """ "digits 7, 2, 1", or the classes by name."""
    names = class_names(run)
    if names is None:
        return "digits " + ", ".join(map(str, labels.tolist()))
    return "classes " + ", ".join(names[label] for label in labels)


def view_marginals(fig, args, most=16):
    """each latent dimension's means and codes against N(0, 1), 16 at most"""
    model, images, _, _ = load_run(args)
    var_mu = posterior_stats(model, images)[1]
    dims = sorted(sorted(range(len(var_mu)), key=lambda k: -var_mu[k])[:most])
    cols = min(4, len(dims))
    rows = math.ceil(len(dims) / 4)
    fig.set_size_inches(4.5 * cols, 3.2 * rows)
    for panel, dim in enumerate(dims):
        plot_marginals(model, images, dim, fig.add_subplot(rows, cols, panel + 1))
    if len(dims) == len(var_mu):
        return []
    shown = ", ".join(map(str, dims))
    return [f"panels: dimensions {shown}, the {most} of {len(var_mu)} whose means spread most"]


def view_curves(fig, args):
    """learning curves from train.py's CSVs (by default the one beside --checkpoint)"""
    paths = args.curves or [beside(args.checkpoint, ".csv")]
    fig.set_size_inches(13, 5)
    left, right = fig.subplots(1, 2)
    for path in paths:
        label = path if len(paths) > 1 else None
        plot_curves(path, left, label=label)
        plot_curves(path, right, terms=True, label=label)
    return []


VIEWS = {  # each view: what draws it, and the PNG it writes unless --out says otherwise
    "latents": (view_latents, "latents_{i}_{j}.png"),
    "scatter": (view_scatter, "scatter_{i}_{j}.png"),
    "samples": (view_samples, "samples.png"),
    "means": (view_means, "means.png"),
    "aggregate": (view_aggregate, "aggregate.png"),
    "interpolate": (view_interpolation, "interpolation.png"),
    "posterior": (view_posterior, "posterior.png"),
    "marginals": (view_marginals, "marginals.png"),
    "curves": (view_curves, "curves.png"),
}


def parse_args(argv=()):
    """The flags, from a list or a string of them; none means the defaults, in a notebook too."""
    count = checked(int, lambda v: v > 0, "a positive integer")
    limit = checked(float, lambda v: 0 < v <= 1000, "a number in (0, 1000]")
    seed = checked(int, lambda v: 0 <= v < 2**64, "from 0 to 2**64 - 1")
    p = ArgumentParser(prog="plot_latents.py", description="Each view writes a PNG named after it.")
    p.add_argument("--checkpoint", default="vae.pt", help="state_dict written by train.py")
    p.add_argument("--i", type=int, default=0, help="latent dimension along the grid's columns")
    p.add_argument("--j", type=int, default=1, help="latent dimension up the grid's rows")
    p.add_argument("--n", type=count, default=10, help="digits a side, points on a line, or draws")
    p.add_argument("--spacing", choices=("linear", "quantile"), default="linear", help="the grid's")
    p.add_argument("--limit", type=limit, default=2.0, help="the linear grid spans [-LIMIT, LIMIT]")
    p.add_argument("--out", help="the PNG to write; {i} and {j} stand for the dimensions")
    p.add_argument("--show", action="store_true", help="also open a window")
    view = p.add_mutually_exclusive_group()
    for flag, (draw, _) in list(VIEWS.items())[1:-1]:  # the grid is the default; curves take files
        view.add_argument(
            f"--{flag}", dest="view", action="store_const", const=flag, help=draw.__doc__
        )
    view.add_argument("--curves", nargs="*", metavar="HISTORY", help=view_curves.__doc__)
    p.add_argument("--seed", type=seed, default=0, help="seeds the samples, draws and pairs")
    p.add_argument("--dataset", choices=DATASETS, help="the run's own (from its CSV), else mnist")
    p.add_argument("--data-dir", default="data", help="the folder that holds MNIST/raw")
    args = p.parse_args(argv.split() if isinstance(argv, str) else list(argv))
    if args.curves is not None:
        args.view = "curves"
    args.view = args.view or "latents"
    return args


def main(argv=()):
    """The command line, callable from a notebook: it writes a PNG and leaves pyplot alone, but
    for --show."""
    args = parse_args(argv)
    draw, out = VIEWS[args.view]
    if args.spacing == "quantile" and args.view in ("latents", "scatter"):
        out = out.replace(".png", "_quantile.png")  # not to replace the linear grid's picture
    run = os.path.splitext(os.path.basename(args.checkpoint))[0]
    if run != "vae" and not args.curves:  # not to replace another run's picture
        out = f"{run}_{out}"
    out = (args.out or out).replace("{i}", str(args.i)).replace("{j}", str(args.j))
    if os.path.isdir(out) or not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FileNotFoundError(f"--out {out}: give a file name in a folder that exists")
    if not os.path.splitext(out)[1]:
        out += ".png"  # as savefig writes it
    fig = plt.figure(layout="constrained") if args.show else Figure(layout="constrained")
    report = draw(fig, args)
    fig.savefig(out, bbox_inches="tight")
    print(f"wrote {out}", *report, sep="\n", flush=True)
    if args.show:
        plt.show()  # where there is no display, matplotlib says so


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        print("\nplot_latents.py: interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError) as error:
        sys.exit(f"plot_latents.py: error: {error}")
