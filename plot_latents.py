"""Draw a trained VAE as pictures: its latent space, the digits it generates, and how it learned.

    python plot_latents.py --i 0 --j 1             # writes latents_0_1.png
    python plot_latents.py --spacing quantile      # writes latents_0_1_quantile.png
    python plot_latents.py --i 0 --j 1 --scatter   # writes scatter_0_1.png
    python plot_latents.py --samples               # writes samples.png
    python plot_latents.py --interpolate           # writes interpolation.png
    python plot_latents.py --curves                # writes curves.png, from vae.csv

The grid decodes n x n latent points in dimensions i and j, with every other
dimension at 0, the prior's mean: spread evenly over [-limit, limit]^2, or at the
prior's quantiles. The scatter shows where the encoder puts the test images, to
compare with the prior N(0, I). The samples are what the decoder makes of codes
z ~ N(0, I), shown above test images and their reconstructions. The interpolation
decodes straight lines between the codes of two test images. The curves are the
figures train.py wrote after each epoch.

Every plotting function draws on ax when given, else on a new figure, and returns
the Axes, as pandas and seaborn do; none calls plt.show().
"""
import csv
import math
import os
import sys

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from train import (HISTORY_COLUMNS, ArgumentParser, HelpFormatter, checked, history_path, in_notebook,
                   load_mnist, positive_int, say, seed_int, silence_stdout)
from vae import VAE, kl_divergence, reconstruction_loss

MAX_LIMIT = 1000.0  # far beyond any code the prior N(0, I) draws, and well inside float32


def load_model(path):
    """A VAE on the CPU, sized from the tensor shapes in a state_dict saved by
    train.py (or by the specification's loop), so no size flags are needed."""
    if os.path.isdir(path):  # checked first: Windows refuses to open a folder with PermissionError
        raise IsADirectoryError(f"{path} is a folder; name the checkpoint file in it")
    try:
        # weights_only: a checkpoint from someone else may hold tensors, never code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}; train one first: python train.py") from None
    except Exception:
        raise ValueError(f"{path} is not a state_dict that loads safely: only tensors are read, "
                         "never pickled objects or code") from None
    keys = list(VAE().state_dict())
    if not (isinstance(state, dict) and set(state) == set(keys)
            and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"{path} is not a VAE state_dict: {what_is_wrong(state, keys)}")
    num_hidden, input_size = state["encoder.0.weight"].shape
    model = VAE(z_dims=state["mu.weight"].shape[0], input_size=input_size, num_hidden=num_hidden)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path} has tensors of inconsistent shapes: "
                         f"{str(error).splitlines()[-1].strip()}") from None
    return model.eval()


def what_is_wrong(state, keys):
    """A short account of how state differs from a VAE state_dict with these keys."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict of tensors"

    def some(names):
        return ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")

    missing = [k for k in keys if k not in state]
    if missing:
        return f"it holds {len(state)} entries ({some(list(state))}) and lacks {some(missing)}"
    extra = [k for k in state if k not in keys]
    if extra:
        return f"it holds entries a VAE has not: {some(extra)}"
    return "some of its entries are not tensors"


def check_pair(model, i, j):
    """Refuse latent dimensions the model does not have, or a pair that is one dimension."""
    for name, k in (("i", i), ("j", j)):
        if not 0 <= k < model.z_dims:
            raise ValueError(f"{name} = {k} is not a latent dimension of this model: "
                             f"use 0 to {model.z_dims - 1}")
    if i == j:
        raise ValueError(f"i and j are both {i}: pick two different latent dimensions")


def device_of(model):
    return next(model.parameters()).device


def axes_or_new(ax, size):
    """ax, or the Axes of a new pyplot figure of size inches, which Jupyter shows once."""
    return ax if ax is not None else plt.figure(figsize=size).add_subplot()


def as_images(images, model):
    """images as a (N, pixels) float tensor, from one image or a batch in any layout,
    refusing pixels outside [0, 1], which the model never saw."""
    x = torch.as_tensor(images).float().reshape(-1, model.encoder[0].in_features)
    if x.min() < 0 or x.max() > 1:
        raise ValueError("pixels must lie in [0, 1], as the model was trained on; "
                         "divide images of 0 to 255 by 255")
    return x.to(device_of(model))


def tile(images, rows, cols):
    """rows * cols flat square images, row-major, as one picture without gaps."""
    side = math.isqrt(images.shape[1])
    if side * side != images.shape[1]:
        raise ValueError(f"images of {images.shape[1]} pixels are not square")
    return (images.reshape(rows, cols, side, side).permute(0, 2, 1, 3)
            .reshape(rows * side, cols * side).cpu().numpy())


def show_tiles(ax, picture, **kwargs):
    """Grey levels as decoded, 0 black and 1 white; pixels kept square and sharp."""
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kwargs)


def grid_values(n, limit=2.0, spacing="linear"):
    """The latent values of the grid's n columns (and rows), ascending.

    "linear": evenly spaced over [-limit, limit], as the specification draws it
    (one tile: 0, the centre). "quantile": the prior's quantiles at (k + 0.5) / n,
    so that each tile stands for an equal share, 1 / n, of N(0, 1); limit plays
    no part.
    """
    if n < 1:
        raise ValueError(f"need n >= 1, got n = {n}")
    if spacing == "quantile":
        return torch.special.ndtri((torch.arange(n) + 0.5) / n)
    if spacing != "linear":
        raise ValueError(f'spacing must be "linear" or "quantile", not {spacing!r}')
    if not 0 < limit <= MAX_LIMIT:
        raise ValueError(f"need 0 < limit <= {MAX_LIMIT:g}, got limit = {limit}")
    return torch.linspace(-limit, limit, n) if n > 1 else torch.zeros(1)


@torch.no_grad()
def plot_latents(model, i=0, j=1, n=10, limit=2.0, ax=None, spacing="linear"):
    """The specification's latent traversal: an n x n grid of decoded digits, z_i
    rising left to right along the columns and z_j bottom to top along the rows,
    every other dimension 0. spacing "linear" spreads the tiles over [-limit, limit];
    "quantile" puts them at the prior's quantiles (see grid_values). The ticks read
    in z units either way. Returns the Axes.

    Only the attributes decoder and z_dims are used, so a model of the
    specification's own class works too.
    """
    check_pair(model, i, j)
    values = grid_values(n, limit, spacing)
    model.eval()
    z = torch.zeros(n, n, model.z_dims)
    z[:, :, i] = values
    z[:, :, j] = values.flip(0)[:, None]  # row 0 is the top of the picture: the largest z_j
    picture = tile(model.decoder(z.reshape(n * n, model.z_dims).to(device_of(model))), n, n)

    ax = axes_or_new(ax, (8, 8))
    if spacing == "linear":
        # extent puts each tile's centre at its z value, so the ticks read in z units.
        half = limit / (n - 1) if n > 1 else limit
        low, high = values[0].item() - half, values[-1].item() + half
        show_tiles(ax, picture, extent=(low, high, low, high))
    else:
        # Tiles one unit wide, their centres at 0.5, 1.5, ...: ticks there name their z.
        show_tiles(ax, picture, extent=(0, n, 0, n))
        every = math.ceil(n / 10)
        ticks = [k + 0.5 for k in range(0, n, every)]
        labels = [f"{values[k].item():.2f}" for k in range(0, n, every)]
        ax.set_xticks(ticks, labels)
        ax.set_yticks(ticks, labels)
    ax.set_xlabel(f"Latent dimension {i}")
    ax.set_ylabel(f"Latent dimension {j}")
    where = ("at the centre, z = 0" if n == 1 else "at the prior's quantiles" if spacing == "quantile"
             else f"over [-{limit:g}, {limit:g}]")
    ax.set_title(f"Latent space traversal for dimensions {i} and {j}, {where}")
    return ax


@torch.no_grad()
def plot_samples(model, n=10, seed=0, ax=None):
    """What the VAE generates: for n x n codes z ~ N(0, I), the prior, the decoder's
    output, the mean E[x|z] of p(x|z). Digit k sits at row k // n, column k % n.
    Returns the Axes.

    The means, not draws from p(x|z): a draw would add noise of standard deviation
    0.71 to every pixel under the Gaussian decoder, or make each pixel black or
    white under the Bernoulli one, as the papers that show such grids also avoid.
    z is drawn on the CPU from a generator seeded with seed, so one seed gives the
    same z on every device and for every model with as many latent dimensions:
    two models can be compared on the very same codes.
    """
    if n < 1:
        raise ValueError(f"need n >= 1, got n = {n}")
    model.eval()
    z = torch.randn(n * n, model.z_dims, generator=torch.Generator().manual_seed(seed))
    picture = tile(model.decoder(z.to(device_of(model))), n, n)

    ax = axes_or_new(ax, (8, 8))
    show_tiles(ax, picture)
    ax.set_axis_off()
    ax.set_title(f"Decoded means E[x|z] of {n * n} codes z drawn from the prior N(0, I)")
    return ax


@torch.no_grad()
def reconstruct(model, images):
    """decoder(mu(x)): the reconstruction from the posterior mean, the same every
    time, unlike forward, which decodes a random sample of z."""
    return model.decoder(model.mu(model.encoder(images.flatten(start_dim=1))))


@torch.no_grad()
def plot_reconstructions(model, images, n=10, ax=None):
    """The first n of images, shaped (N, 784) or (N, 1, 28, 28) with pixels in
    [0, 1], in the top row, and their reconstructions decoder(mu(x)) below.
    Returns the Axes."""
    images = torch.as_tensor(images)
    if not 1 <= n <= len(images):
        raise ValueError(f"need 1 <= n <= {len(images)}, the number of images; got n = {n}")
    x = as_images(images[:n], model)
    model.eval()
    picture = tile(torch.cat([x, reconstruct(model, x)]), 2, n)

    ax = axes_or_new(ax, (n, 2.4))
    show_tiles(ax, picture)
    side = picture.shape[0] // 2
    ax.set_xticks([])
    ax.set_yticks([side / 2 - 0.5, 3 * side / 2 - 0.5], ["image", "decode(mu)"])
    ax.tick_params(length=0)
    ax.set_title("Test images and their reconstructions")
    return ax


@torch.no_grad()
def plot_interpolation(model, start, end, n=10, ax=None):
    """Walks in latent space between pairs of images: start and end are one image
    each, or batches of as many images (any layout, pixels in [0, 1]), one row per
    pair. Each row shows the start image, the decodings of n points evenly spaced
    on the straight line from mu(start) to mu(end), both ends included, and the end
    image. Returns the Axes."""
    start, end = as_images(start, model), as_images(end, model)
    if len(start) != len(end):
        raise ValueError(f"start holds {len(start)} images and end {len(end)}: give as many of each")
    if n < 2:
        raise ValueError(f"need n >= 2 points, the two ends at least; got n = {n}")
    model.eval()
    mu_start, mu_end = model.mu(model.encoder(start)), model.mu(model.encoder(end))
    t = torch.linspace(0, 1, n, device=mu_start.device)[None, :, None]
    line = mu_start[:, None] + t * (mu_end - mu_start)[:, None]  # (pairs, n, z_dims)
    rows = torch.cat([start[:, None], model.decoder(line), end[:, None]], dim=1)
    picture = tile(rows.reshape(-1, start.shape[1]), len(start), n + 2)

    ax = axes_or_new(ax, (n + 2, 1.2 * len(start) + 0.6))
    show_tiles(ax, picture)
    side = picture.shape[1] // (n + 2)
    ax.set_xticks([(k + 0.5) * side - 0.5 for k in (0, 1, n, n + 1)], ["start", "mu(start)", "mu(end)", "end"])
    ax.set_yticks([])
    ax.tick_params(length=0)
    ax.set_title(f"Decoded means along the straight line from mu(start) to mu(end), {n} points")
    return ax


@torch.no_grad()
def posterior_stats(model, images):
    """The posterior means mu(x) (N, z_dims) of images and, per latent dimension,
    the spread of those means Var[mu], the mean posterior variance E[sigma^2], and
    the mean KL(q(z_k|x) || N(0, 1)); these KLs sum to the ELBO's KL term.

    By the law of total variance the aggregate posterior q(z) has variance
    Var[mu] + E[sigma^2] in each dimension: about 1 when it matches the prior.
    """
    model.eval()
    h = model.encoder(images.flatten(start_dim=1))
    mu, logvar = model.mu(h), model.logvar(h)
    kl = torch.stack([kl_divergence(mu[:, k], logvar[:, k]) for k in range(mu.shape[1])]) / len(mu)
    return mu, mu.var(dim=0, correction=0), logvar.exp().mean(dim=0), kl


def plot_posterior_means(mu, labels, i=0, j=1, limit=2.0, ax=None):
    """Scatter the posterior means (mu_i, mu_j), coloured by digit, with the square
    [-limit, limit]^2 whose corners are the traversal grid's outer tiles (none for
    limit 0, a grid of one tile). Returns the Axes."""
    ax = axes_or_new(ax, (8, 8))
    # Markers without antialiasing: 10,000 of them then take a few colours, not
    # thousands, and the PNG stays small.
    points = ax.scatter(mu[:, i].cpu(), mu[:, j].cpu(), c=labels.cpu(), cmap="tab10",
                        vmin=-0.5, vmax=9.5, s=6, linewidths=0, antialiased=False)
    if limit > 0:
        ax.add_patch(Rectangle((-limit, -limit), 2 * limit, 2 * limit,
                               fill=False, linestyle="--", edgecolor="black", label="grid of the traversal"))
        ax.legend(loc="upper right")
    ax.figure.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set_aspect("equal")
    ax.set_xlabel(f"mu {i}")
    ax.set_ylabel(f"mu {j}")
    ax.set_title("Posterior means of the test images")
    return ax


def read_history(path):
    """The history train.py wrote beside a checkpoint, as one list of numbers (floats)
    per column: {"epoch": [1.0, 2.0, ...], "train_loss": [...], ...}. Raises
    ValueError (or FileNotFoundError) naming the file and what is wrong with it."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; name the history file (such as vae.csv) in it")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: also as a spreadsheet saves it
            return history_columns(list(csv.DictReader(f)), path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no history at {path}; train.py writes one beside each checkpoint") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a history written by train.py: it is not text") from None


def history_columns(history, name="the history given"):
    """A history as columns of numbers, from its rows (as csv.DictReader or
    DataFrame.to_dict("records") give them) or its columns (as read_history gives
    them), refusing anything that is not train.py's history."""
    rows = ([dict(zip(history, values)) for values in zip(*history.values())] if isinstance(history, dict)
            else list(history))
    if not rows:
        raise ValueError(f"{name} holds no epochs: it is empty, or its run stopped before one ended")
    missing = [c for c in HISTORY_COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"{name} is not a history written by train.py: it has no column "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    try:
        return {c: [float(row[c]) for row in rows] for c in HISTORY_COLUMNS}
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a history written by train.py: some figures are not numbers") from None


def history_units(columns, terms=False):
    """What a history's figures measure, for the y axis: they depend on --recon
    (the nats the squared error leaves out, of the -ELBO and its reconstruction
    term, never of the KL) and on --binarize."""
    left_out, binary = columns["nats_left_out"][0], columns["binarized"][0]
    if left_out:
        return (f"nats per image, recon less {left_out:.2f}" if terms else
                f"nats per image, less {left_out:.2f}") + " (squared error: a Gaussian decoder)"
    if binary:
        return "nats per image (cross-entropy on binarized pixels: a Bernoulli decoder)"
    return "cross-entropy per image (on grey pixels: not a log-likelihood)"


def plot_curves(history, ax=None, terms=False, label=None):
    """How a run learned, per epoch: the test -ELBO beside the training -ELBO
    (reconstruction + KL on the training batches, averaged over the epoch: with
    --beta other than 1 that is not the loss Adam minimised, so like is compared with
    like); with terms, the test -ELBO's two terms, reconstruction and KL, instead.
    history is a path to the CSV train.py writes, its rows, or its columns. label
    names the run in the legend; call again on the same ax to overlay another run
    measured in the same units. Returns the Axes.
    """
    name = os.fspath(history) if isinstance(history, (str, os.PathLike)) else label or "the history given"
    columns = read_history(history) if isinstance(history, (str, os.PathLike)) else history_columns(history)
    units = history_units(columns, terms)
    if ax is not None and ax.get_ylabel() not in ("", units):
        raise ValueError(f"{name} is in {units}; the curves already drawn are in {ax.get_ylabel()}: "
                         "draw them apart")
    epochs = columns["epoch"]
    if terms:
        series = [("test recon", "-", columns["test_recon"]), ("test KL", ":", columns["test_kl"])]
    else:
        train_nelbo = [r + k for r, k in zip(columns["train_recon"], columns["train_kl"])]
        series = [("test -ELBO", "-", columns["test_nelbo"]), ("train -ELBO", "--", train_nelbo)]
    ax = axes_or_new(ax, (7, 5))
    color = None
    for series_name, style, values in series:
        line, = ax.plot(epochs, values, style, color=color, marker=".",
                        label=f"{label}: {series_name}" if label else series_name)
        color = line.get_color()  # one colour per run, one line style per series
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(units)
    ax.set_title("The test -ELBO's two terms" if terms else "-ELBO per image, test and training")
    ax.legend()
    return ax


# The views of the command line. Each loads what it needs, then draws on a figure
# from new_figure, and returns that figure and the lines to print.

def draw_latents(new_figure, args):
    model = load_model(args.checkpoint)
    fig = new_figure(figsize=(8, 8), layout="constrained")
    plot_latents(model, args.i, args.j, args.n, args.limit, ax=fig.add_subplot(), spacing=args.spacing)
    return fig, []


def draw_scatter(new_figure, args):
    """The grid beside the test images' posterior means, and the table of q(z)."""
    model = load_model(args.checkpoint)
    check_pair(model, args.i, args.j)
    images, labels = load_mnist(args.data_dir, train=False)
    mu, spread, variance, kl = posterior_stats(model, images)
    fig = new_figure(figsize=(14, 7), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot_latents(model, args.i, args.j, args.n, args.limit, ax=left, spacing=args.spacing)
    corner = grid_values(args.n, args.limit, args.spacing)[-1].item()
    plot_posterior_means(mu, labels, args.i, args.j, corner, ax=right)
    rows = zip(spread.tolist(), variance.tolist(), kl.tolist())
    return fig, [f"\nq(z) on {len(images)} test images; by the law of total variance "
                 "Var[z] = Var[mu] + E[sigma^2], about 1 where q(z) matches N(0, I):",
                 "  dim  Var[mu]  E[sigma^2]  Var[z]     KL",
                 *(f"  {k:3d}  {s:7.3f}  {v:10.3f}  {s + v:6.3f}  {d:5.3f}" for k, (s, v, d) in enumerate(rows)),
                 f"KL per image {kl.sum().item():.2f}: the sum of the column, and the test KL train.py printed"]


def draw_samples(new_figure, args):
    """Decoded prior samples above test images and their reconstructions, and the
    reconstruction error over the whole test set."""
    model = load_model(args.checkpoint)
    images, _ = load_mnist(args.data_dir, train=False)
    fig = new_figure(figsize=(8, 9.3), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[5, 1])
    plot_samples(model, args.n, args.seed, ax=top)
    plot_reconstructions(model, images, 10, ax=bottom)
    error = reconstruction_loss(reconstruct(model, images), images).item() / len(images)
    return fig, [f"decode(mu) reconstructs the {len(images)} test images "
                 f"with a squared error of {error:.2f} per image"]


def different_digits(labels, pairs, seed):
    """Indices (start, end) of up to pairs test images of different digits, drawn
    from a generator seeded with seed."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    half = len(order) // 2
    start, end = order[:half], order[half:2 * half]
    differ = labels[start] != labels[end]
    return start[differ][:pairs], end[differ][:pairs]


def draw_interpolation(new_figure, args, pairs=6):
    """Straight lines in latent space between test images of different digits."""
    model = load_model(args.checkpoint)
    images, labels = load_mnist(args.data_dir, train=False)
    start, end = different_digits(labels, pairs, args.seed)
    fig = new_figure(figsize=(args.n + 2, 1.2 * len(start) + 0.6), layout="constrained")
    plot_interpolation(model, images[start], images[end], args.n, ax=fig.add_subplot())
    return fig, ["rows, top to bottom: test images " + ", ".join(
        f"{a} ({labels[a]}) to {b} ({labels[b]})" for a, b in zip(start.tolist(), end.tolist()))]


def draw_curves(new_figure, args):
    """Learning curves of one run or several, side by side: -ELBO, then its terms."""
    paths = args.curves or [history_path(args.checkpoint)]
    fig = new_figure(figsize=(13, 5), layout="constrained")
    left, right = fig.subplots(1, 2)
    for path in paths:
        label = path if len(paths) > 1 else None
        plot_curves(path, ax=left, label=label)
        plot_curves(path, ax=right, terms=True, label=label)
    return fig, []


GRID = ("i", "j", "n", "spacing", "limit")
VIEWS = {  # what each view draws, the PNG it writes unless --out says otherwise, the flags it takes
    "latents": (draw_latents, "latents_{i}_{j}.png", GRID),
    "scatter": (draw_scatter, "scatter_{i}_{j}.png", (*GRID, "data_dir")),
    "samples": (draw_samples, "samples.png", ("n", "seed", "data_dir")),
    "interpolate": (draw_interpolation, "interpolation.png", ("n", "seed", "data_dir")),
    "curves": (draw_curves, "curves.png", ()),
}
DEFAULTS = {"i": 0, "j": 1, "n": 10, "spacing": "linear", "limit": 2.0, "seed": 0, "data_dir": "data"}


def parse_args(argv=()):
    p = ArgumentParser(prog="plot_latents.py", formatter_class=HelpFormatter,
                       description="Draw the latent space of a VAE saved by train.py, the digits it generates, "
                                   "or how it learned.")
    p.add_argument("--checkpoint", default="vae.pt", metavar="PATH", help="state_dict written by train.py")
    p.add_argument("--i", type=int, metavar="I", help="latent dimension along the columns (default: 0)")
    p.add_argument("--j", type=int, metavar="J", help="latent dimension along the rows (default: 1)")
    p.add_argument("--n", type=positive_int, metavar="N",
                   help="digits per side of the grid or of the samples, or points per row with --interpolate "
                        "(default: 10)")
    p.add_argument("--spacing", choices=("linear", "quantile"),
                   help="the grid's tiles evenly spaced over [-limit, limit], or at the prior's quantiles "
                        "(k + 0.5) / n, each standing for an equal share of N(0, 1) (default: linear)")
    p.add_argument("--limit", type=checked(float, lambda v: 0 < v <= MAX_LIMIT, f"a number in (0, {MAX_LIMIT:g}]"),
                   metavar="L", help="the linear grid spans [-limit, limit] in both dimensions (default: 2; "
                                     "the quantile grid takes no limit)")
    p.add_argument("--out", metavar="PATH",
                   help="PNG to write; {i} and {j} stand for the two dimensions (default: latents_{i}_{j}.png, "
                        "or the view's name: scatter_{i}_{j}.png, samples.png, interpolation.png, curves.png; "
                        "with --spacing quantile, _quantile before .png)")
    p.add_argument("--show", action="store_true", help="also open a window")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--scatter", dest="view", action="store_const", const="scatter",
                      help="add the test set's posterior means beside the grid and print their spread (needs MNIST)")
    view.add_argument("--samples", dest="view", action="store_const", const="samples",
                      help="decode codes drawn from the prior N(0, I), with test images and their "
                           "reconstructions below (needs MNIST)")
    view.add_argument("--interpolate", dest="view", action="store_const", const="interpolate",
                      help="decode straight lines between the codes of test images of different digits "
                           "(needs MNIST)")
    view.add_argument("--curves", nargs="*", metavar="HISTORY",
                      help="learning curves from the CSVs train.py writes (default: the one beside "
                           "--checkpoint); several are overlaid (needs no MNIST and no checkpoint)")
    p.add_argument("--seed", type=seed_int, metavar="N",
                   help="seed for the codes of --samples and the pairs of --interpolate (default: 0)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder holding MNIST/raw, for --scatter, --samples and --interpolate (default: data)")
    args = p.parse_args(argv if isinstance(argv, str) else list(argv or ()))
    if args is None:  # --help in a notebook
        return None
    args.view = "curves" if args.curves is not None else args.view or "latents"
    takes = VIEWS[args.view][2]
    if args.spacing == "quantile" and args.limit is not None:
        p.error("--limit applies to the linear grid only: the quantile grid's tiles sit at the prior's quantiles")
    for name, default in DEFAULTS.items():  # a flag the view does not use must not pass unnoticed
        if getattr(args, name) is not None and name not in takes:
            view = "the grid" if args.view == "latents" else f"--{args.view}"
            p.error(f"--{name.replace('_', '-')} does not apply to {view}")
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main(argv=()):
    """The command line, its flags as a list, callable from a notebook too: it writes
    a PNG and, unless --show asks for a window, leaves pyplot as it was (no figure,
    no backend switch). A user's error ends in one line: in a terminal, on stderr
    with a non-zero exit status; in a notebook, as an exception that carries it."""
    args = parse_args(argv)
    if args is None:
        return
    draw, default_out, _ = VIEWS[args.view]
    if args.spacing == "quantile":  # a name of its own, so as not to replace the linear grid's
        default_out = default_out.replace(".png", "_quantile.png")
    out = (args.out or default_out).replace("{i}", str(args.i)).replace("{j}", str(args.j))
    try:
        out = png_path(out)
        # A Figure of its own needs no display and no backend; pyplot only to show it.
        fig, report = draw(plt.figure if args.show else Figure, args)
        fig.savefig(out, bbox_inches="tight")
        say(f"wrote {out}", *report)
    except BrokenPipeError:
        silence_stdout()
        sys.exit(1)
    except (ValueError, OSError) as error:
        if in_notebook():
            raise
        sys.exit(f"plot_latents.py: error: {error}")
    except KeyboardInterrupt:
        if in_notebook():
            raise
        print("\nplot_latents.py: interrupted", file=sys.stderr)
        sys.exit(130)
    if not args.show:
        return
    if plt.get_backend().lower() == "agg":
        plt.close(fig)
        say("no display here to --show on; open the PNG instead")
    else:
        plt.show()


def png_path(out):
    """--out as the file savefig will write (.png added to a name without an
    extension), refused before any work if it is a folder or its folder is missing."""
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        raise IsADirectoryError(f"--out {out} is a folder; give a file name such as {os.path.join(out, 'latents.png')}")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {out}: the folder {folder} does not exist; create it first")
    return out if os.path.splitext(out)[1] else out + ".png"


if __name__ == "__main__":
    main(sys.argv[1:])
