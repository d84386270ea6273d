"""Draw a trained VAE: its latent space, the digits it generates, what q(z|x) holds, how it learned.

    python plot_latents.py --i 0 --j 1     # the grid: latents_0_1.png
    python plot_latents.py --samples       # or --scatter, --interpolate, --posterior, --marginals, --curves

The plotting functions take any model with the specification's attributes, draw on ax if given (else on a new
figure) and return the Axes, as pandas and seaborn do; none calls plt.show().
"""
import argparse
import csv
import math
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from train import HISTORY_COLUMNS, binarize_once, history_path, load_mnist
from vae import VAE, encode, kl_divergence, reconstruction_loss


def grid_values(n, limit=2.0, spacing="linear"):
    """The grid's n values, ascending: evenly over [-limit, limit] (n = 1: the centre), or at the prior's
    quantiles (k + 0.5) / n, each tile an equal share of N(0, 1)."""
    if spacing not in ("linear", "quantile"):
        raise ValueError(f'spacing must be "linear" or "quantile", not {spacing!r}')
    if spacing == "quantile":
        return torch.special.ndtri((torch.arange(n) + 0.5) / n)
    return torch.linspace(-limit, limit, n) if n > 1 else torch.zeros(1)

@torch.no_grad()
def plot_latents(model, i=0, j=1, n=10, limit=2.0, ax=None, spacing="linear"):
    """The specification's traversal: n x n decoded digits, z_i rising along the columns and z_j up
    the rows, the other dimensions at 0; the ticks read in z units."""
    for name, k in (("i", i), ("j", j)):
        if not 0 <= k < model.z_dims:
            raise ValueError(f"{name} = {k} is not a latent dimension of this model: use 0 to {model.z_dims - 1}")
    if i == j:
        raise ValueError(f"i and j are both {i}: pick two different latent dimensions")
    values = grid_values(n, limit, spacing)
    z = torch.zeros(n, n, model.z_dims)
    z[:, :, i] = values
    z[:, :, j] = values.flip(0)[:, None]  # row 0 is the top of the picture: the largest z_j
    ax = axes_or_new(ax, (8, 8))
    decoded = model.eval().decoder(z.reshape(n * n, -1).to(next(model.parameters()).device))
    if spacing == "linear":  # each tile's centre at its z value
        half = limit / (n - 1) if n > 1 else limit
        show_tiles(ax, decoded, n, n, extent=(values[0].item() - half, values[-1].item() + half) * 2)
        where = f"over [-{limit:g}, {limit:g}]" if n > 1 else "at the centre, z = 0"
    else:  # tiles one unit wide, their centres ticked with their z
        show_tiles(ax, decoded, n, n, extent=(0, n, 0, n))
        ticks = range(0, n, math.ceil(n / 10))
        for set_ticks in (ax.set_xticks, ax.set_yticks):
            set_ticks([k + 0.5 for k in ticks], [f"{values[k]:.2f}" for k in ticks])
        where = "at the prior's quantiles"
    ax.set_xlabel(f"Latent dimension {i}")
    ax.set_ylabel(f"Latent dimension {j}")
    ax.set_title(f"Latent space traversal for dimensions {i} and {j} {where}, the others at 0")
    return ax

@torch.no_grad()
def plot_samples(model, n=10, seed=0, ax=None):
    """What the VAE generates: n x n codes z ~ N(0, I) from a CPU generator seeded with seed (the same z on
    any device, for any model as wide), decoded to their means E[x|z]: a draw would only add pixel noise."""
    z = torch.randn(n * n, model.z_dims, generator=torch.Generator().manual_seed(seed))
    ax = axes_or_new(ax, (8, 8))
    show_tiles(ax, model.eval().decoder(z.to(next(model.parameters()).device)), n, n)
    ax.set_axis_off()
    ax.set_title(f"Decoded means E[x|z] of {n * n} codes z drawn from the prior N(0, I)")
    return ax

@torch.no_grad()
def plot_reconstructions(model, images, n=10, ax=None):
    """The first n images (pixels in [0, 1], any layout) above their reconstructions decode(mu): the same
    every time, unlike forward's, which decode a sample z ~ q(z|x)."""
    x = as_images(images, model)
    if not 1 <= n <= len(x):
        raise ValueError(f"need 1 <= n <= {len(x)}, the number of images; got n = {n}")
    ax = axes_or_new(ax, (n, 2.4))
    show_tiles(ax, torch.cat([x[:n], model.eval().decoder(encode(model, x[:n])[0])]), 2, n)
    label_tiles(ax, 2, {0: "image", 1: "decode(mu)"}, rows=True)
    ax.set_title("Test images and their reconstructions")
    return ax

@torch.no_grad()
def plot_interpolation(model, start, end, n=10, ax=None):
    """Straight lines in latent space: for each pair of images (one each, or batches of as many), the
    start image, n decodings evenly spaced from mu(start) to mu(end), and the end image."""
    start, end = as_images(start, model), as_images(end, model)
    if n < 2:
        raise ValueError(f"need n >= 2 points, the two ends at least; got n = {n}")
    a, b = encode(model.eval(), start)[0], encode(model, end)[0]
    line = a[:, None] + torch.linspace(0, 1, n, device=a.device)[None, :, None] * (b - a)[:, None]
    rows = torch.cat([start[:, None], model.decoder(line), end[:, None]], dim=1)
    ax = axes_or_new(ax, (n + 2, 1.2 * len(start) + 0.6))
    show_tiles(ax, rows.flatten(end_dim=1), len(start), n + 2)
    label_tiles(ax, n + 2, {0: "start", 1: "mu(start)", n: "mu(end)", n + 1: "end"})
    ax.set_title(f"Decoded means along the straight line from mu(start) to mu(end), {n} points")
    return ax

@torch.no_grad()
def plot_posterior_draws(model, images, n=8, seed=0, ax=None):
    """What q(z|x) holds (question 2a): a row per image, then decode(mu) and n decoded means of z ~ q(z|x),
    drawn from a CPU generator seeded with seed: what the variances add to the means."""
    x = as_images(images, model)
    mu, logvar = encode(model.eval(), x)
    eps = torch.randn(len(x), n, model.z_dims, generator=torch.Generator().manual_seed(seed)).to(mu.device)
    z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps
    rows = torch.cat([x[:, None], model.decoder(mu)[:, None], model.decoder(z)], dim=1)
    ax = axes_or_new(ax, (n + 2, 1.2 * len(x) + 0.6))
    show_tiles(ax, rows.flatten(end_dim=1), len(x), n + 2)
    label_tiles(ax, n + 2, {0: "image", 1: "decode(mu)", 1.5 + n / 2: f"decoded z ~ q(z|x), {n} draws"})
    ax.set_title(f"Each image, its mean code decoded, and {n} codes drawn from q(z|x) decoded")
    return ax

@torch.no_grad()
def plot_marginals(model, images, k=0, ax=None):
    """Latent dimension k over the images (question 2b): densities of the means mu_k(x) and of a code z_k ~ q(z|x)
    per image (the aggregate posterior; a CPU generator seeded with 0) beside N(0, 1), with their variances."""
    if not 0 <= k < model.z_dims:
        raise ValueError(f"k = {k} is not a latent dimension of this model: use 0 to {model.z_dims - 1}")
    mu, logvar = encode(model.eval(), as_images(images, model))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(0)).to(mu.device)
    means, codes = mu[:, k].cpu().numpy(), (mu + torch.exp(0.5 * logvar) * eps)[:, k].cpu().numpy()
    both = np.concatenate([means, codes, [-4, 4]])
    t, ax = np.linspace(both.min(), both.max(), 81), axes_or_new(ax, (6, 4))
    ax.hist(codes, t, density=True, alpha=0.4, label=f"codes z_{k} ~ q(z|x), variance {codes.var():.3f}")
    ax.hist(means, t, density=True, alpha=0.4, label=f"means mu_{k}(x), variance {means.var():.3f}")
    ax.plot(t, np.exp(-t**2 / 2) / math.sqrt(2 * math.pi), "k--", label="prior N(0, 1), variance 1")
    ax.set_xlabel(f"latent dimension {k}")
    ax.set_ylabel("density")
    ax.set_title(f"Dimension {k} over {len(means)} images")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.5)  # room for the legend
    ax.legend(fontsize="small")
    return ax

@torch.no_grad()
def posterior_stats(model, images):
    """The posterior means mu(x) and, per dimension, Var[mu], E[sigma^2] (q(z) has variance their sum, by the
    law of total variance) and the mean KL(q(z_k|x) || N(0, 1)), whose sum is the ELBO's KL."""
    mu, logvar = encode(model.eval(), images)
    kl = torch.stack([kl_divergence(mu[:, k], logvar[:, k]) for k in range(mu.shape[1])]) / len(mu)
    return mu, mu.var(dim=0, correction=0), logvar.exp().mean(dim=0), kl

def plot_posterior_means(mu, labels, i=0, j=1, limit=2.0, ax=None):
    """The posterior means (mu_i, mu_j), coloured by digit, with the square [-limit, limit]^2 whose corners
    are the traversal grid's outer tiles (none for limit 0)."""
    ax = axes_or_new(ax, (8, 8))
    # No antialiasing: 10,000 markers then take a few colours, and the PNG stays small.
    points = ax.scatter(*mu[:, [i, j]].cpu().numpy().T, c=labels.cpu().numpy(), cmap="tab10", vmin=-0.5, vmax=9.5,
                        s=6, linewidths=0, antialiased=False)
    if limit > 0:
        ax.add_patch(Rectangle((-limit, -limit), 2 * limit, 2 * limit, fill=False, linestyle="--",
                               edgecolor="black", label="grid of the traversal"))
        ax.legend(loc="upper right")
    ax.figure.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set_aspect("equal")
    ax.set_xlabel(f"mu {i}")
    ax.set_ylabel(f"mu {j}")
    ax.set_title("Posterior means of the test images")
    return ax

def read_history(history, name=None):
    """{column: [floats]} from a history's CSV (train.py's, or any with epoch and some of its columns), rows,
    columns or DataFrame."""
    if isinstance(history, (str, os.PathLike)):
        name = name or os.fspath(history)
        try:
            with open(history, newline="", encoding="utf-8-sig") as f:  # -sig: as a spreadsheet saves it too
                history = list(csv.DictReader(f))
        except FileNotFoundError:
            raise FileNotFoundError(f"no history at {name}; train.py writes one beside each checkpoint") from None
        except UnicodeDecodeError:
            raise ValueError(f"{name} is not a history: it is not text") from None
    name, history = name or "the history given", history.to_dict("list") if hasattr(history, "to_dict") else history
    rows = [dict(zip(history, v)) for v in zip(*history.values())] if isinstance(history, dict) else list(history)
    if not rows:
        raise ValueError(f"{name} holds no epochs: it is empty, or its run stopped before one ended")
    present = [c for c in HISTORY_COLUMNS if c in rows[0]]
    if "epoch" not in present or len(present) < 2:
        raise ValueError(f"{name} is not a history: it needs a column epoch and some of train_loss, ..., test_kl")
    try:
        return {c: [float(row[c]) for row in rows] for c in present}
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a history: some figures are not numbers") from None

def history_units(columns, terms=False):
    """What a history's figures measure, from its unit columns: they depend on --recon and --binarize."""
    if "nats_left_out" not in columns or "binarized" not in columns:
        return "per image, in units unknown (no columns nats_left_out and binarized)"
    if columns["nats_left_out"][0]:
        less = f"{'recon ' * terms}less {columns['nats_left_out'][0]:.2f}"
        return f"nats per image, {less} (squared error: a Gaussian decoder)"
    if columns["binarized"][0]:
        return "nats per image (cross-entropy on binarized pixels: a Bernoulli decoder)"
    return "cross-entropy per image (on grey pixels: not a log-likelihood)"

def plot_curves(history, ax=None, terms=False, label=None):
    """How a run learned: the test -ELBO beside the training -ELBO, or with terms the test -ELBO's two terms;
    label names the run, to overlay others in the same units on ax."""
    c = read_history(history, label)
    units = history_units(c, terms)
    if ax is not None and ax.get_ylabel() not in ("", units) and "unknown" not in ax.get_ylabel() + units:
        raise ValueError(f"{label or 'this history'} is in {units}; the curves drawn are in {ax.get_ylabel()}: "
                         "draw them apart")
    add = lambda a, b: [x + y for x, y in zip(c[a], c[b])] if a in c and b in c else None
    series = ([("test recon", "-", c.get("test_recon")), ("test KL", ":", c.get("test_kl"))] if terms else
              [("test -ELBO", "-", c.get("test_nelbo") or add("test_recon", "test_kl")),
               ("train -ELBO", "--", add("train_recon", "train_kl")),  # recon + KL, whatever beta Adam used
               ("train loss", "--", None if "train_kl" in c else c.get("train_loss"))])
    if not any(values for _, _, values in series):
        raise ValueError(f"{label or 'the history'} has none of the figures to draw: "
                         + ("test_recon, test_kl" if terms else "test_nelbo, train_recon and train_kl, train_loss"))
    ax, color = axes_or_new(ax, (7, 5)), None
    for name, style, values in series:
        if values:  # one colour per run, one line style per series
            color = ax.plot(c["epoch"], values, style, color=color, marker=".",
                            label=f"{label}: {name}" if label else name)[0].get_color()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(units)
    ax.set_title("The test -ELBO's two terms" if terms else "-ELBO per image, test and training")
    ax.legend()
    return ax

def load_model(path):
    """A VAE on the CPU, sized from the state_dict at path (train.py's, or the specification's loop's)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}; train one first: python train.py")
    try:  # weights_only: a checkpoint from someone else holds tensors, never code that runs
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise ValueError(f"{path} is not a state_dict that loads safely (tensors only, no code)") from None
    try:
        model = VAE(state["mu.weight"].shape[0], *state["encoder.0.weight"].shape[::-1])  # z_dims, pixels, hidden
        model.load_state_dict(state)
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[-1].strip()[:150]
        raise ValueError(f"{path} is not the state_dict of a VAE ({type(error).__name__}: {reason})") from None
    return model.eval()

def axes_or_new(ax, size):
    """ax, or the Axes of a new pyplot figure of size inches, which Jupyter shows once."""
    return ax if ax is not None else plt.figure(figsize=size).add_subplot()

def as_images(images, model):
    """Images in any layout as (N, pixels) on the model's device, refusing pixels outside [0, 1]."""
    x = torch.as_tensor(images).float().reshape(-1, model.encoder[0].in_features)
    if x.min() < 0 or x.max() > 1:
        raise ValueError("pixels must lie in [0, 1], as the model was trained on; divide images of 0 to 255 by 255")
    return x.to(next(model.parameters()).device)

def show_tiles(ax, images, rows, cols, **kwargs):
    """rows x cols flat square images, row-major, as one picture: 0 black, 1 white, pixels square and sharp."""
    side = math.isqrt(images.shape[1])
    picture = images.reshape(rows, cols, side, side).permute(0, 2, 1, 3).reshape(rows * side, cols * side)
    ax.imshow(picture.cpu().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kwargs)

def label_tiles(ax, count, names, rows=False):
    """Name tiles {index: name} along the picture's count columns (or rows), with no other ticks."""
    side = ax.images[0].get_array().shape[0 if rows else 1] / count
    (ax.set_yticks if rows else ax.set_xticks)([(k + 0.5) * side - 0.5 for k in names], list(names.values()))
    (ax.set_xticks if rows else ax.set_yticks)([])
    ax.tick_params(length=0)


# ---------------------------------------------------------------- the command line: a function per view

def load_run(args):
    """The checkpoint's model, the test set as train.py scored it and its --recon, from the history beside it."""
    model, (images, labels) = load_model(args.checkpoint), load_mnist(args.data_dir, train=False)
    try:
        run = read_history(history_path(args.checkpoint))
    except (OSError, ValueError):
        return model, images, labels, None
    recon = None if "nats_left_out" not in run else "mse" if run["nats_left_out"][0] else "bce"
    return model, (binarize_once(images) if run.get("binarized", [0])[0] else images), labels, recon

def view_latents(fig, args):
    fig.set_size_inches(8, 8)
    plot_latents(load_model(args.checkpoint), args.i, args.j, args.n, args.limit, fig.add_subplot(), args.spacing)
    return []

def view_scatter(fig, args):
    """The grid beside the test images' posterior means, and the table of q(z)."""
    model, images, labels, _ = load_run(args)
    mu, spread, variance, kl = posterior_stats(model, images)
    fig.set_size_inches(14, 7)
    left, right = fig.subplots(1, 2)
    plot_latents(model, args.i, args.j, args.n, args.limit, left, args.spacing)
    plot_posterior_means(mu, labels, args.i, args.j, grid_values(args.n, args.limit, args.spacing)[-1].item(), right)
    return [f"\nq(z) on {len(images)} test images; by the law of total variance Var[z] = Var[mu] + E[sigma^2], "
            "about 1 where q(z) matches N(0, I):", "  dim  Var[mu]  E[sigma^2]  Var[z]     KL",
            *(f"  {k:3d}  {s:7.3f}  {v:10.3f}  {s + v:6.3f}  {d:5.3f}"
              for k, (s, v, d) in enumerate(zip(spread.tolist(), variance.tolist(), kl.tolist()))),
            f"KL per image {kl.sum().item():.2f}: the sum of the column, and the test KL train.py printed"]

@torch.no_grad()
def view_samples(fig, args):
    """Decoded prior samples above test images and their reconstructions, and the error of those."""
    model, images, _, recon = load_run(args)
    fig.set_size_inches(8, 9.3)
    top, bottom = fig.subplots(2, 1, height_ratios=[5, 1])
    plot_samples(model, args.n, args.seed, top)
    plot_reconstructions(model, images, 10, bottom)
    decoded = model.decoder(encode(model, images)[0])
    errors = [f"{name} of {reconstruction_loss(decoded, images, kind).item() / len(images):.2f}"
              for kind, name in (("mse", "a squared error"), ("bce", "a cross-entropy")) if recon in (None, kind)]
    return [f"decode(mu) reconstructs the {len(images)} test images with {' and '.join(errors)} per image"]

def view_interpolation(fig, args, pairs=6):
    """Straight lines between the codes of test images of different digits, pairs drawn with --seed."""
    model, images, labels, _ = load_run(args)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    start, end = order[:len(order) // 2], order[len(order) // 2:2 * (len(order) // 2)]
    start, end = start[labels[start] != labels[end]][:pairs], end[labels[start] != labels[end]][:pairs]
    fig.set_size_inches(args.n + 2, 1.2 * len(start) + 0.6)
    plot_interpolation(model, images[start], images[end], args.n, fig.add_subplot())
    return ["rows, top to bottom: test images " + ", ".join(
        f"{a} ({labels[a]}) to {b} ({labels[b]})" for a, b in zip(start.tolist(), end.tolist()))]

def view_posterior(fig, args, count=8):
    model, images, labels, _ = load_run(args)
    fig.set_size_inches(args.n + 2, 1.2 * count + 0.6)
    plot_posterior_draws(model, images[:count], args.n, args.seed, fig.add_subplot())
    return [f"rows, top to bottom: test images 0 to {count - 1}, digits {', '.join(map(str, labels[:count].tolist()))}"]

def view_marginals(fig, args, most=16):
    """A panel per latent dimension; of more, the 16 whose means spread most (Burda et al.'s active units)."""
    model, images, _, _ = load_run(args)
    spread = posterior_stats(model, images)[1]
    dims = sorted(sorted(range(model.z_dims), key=lambda k: -spread[k])[:most])
    cols, rows = min(4, len(dims)), math.ceil(len(dims) / 4)
    fig.set_size_inches(4.5 * cols, 3.2 * rows)
    for panel, k in enumerate(dims):
        plot_marginals(model, images, k, fig.add_subplot(rows, cols, panel + 1))
    return [] if len(dims) == model.z_dims else [
        f"panels: dimensions {', '.join(map(str, dims))}, the {most} of {model.z_dims} whose means spread most"]

def view_curves(fig, args):
    """Learning curves of one run or several, overlaid: -ELBO on the left, its terms on the right."""
    paths = args.curves or [history_path(args.checkpoint)]
    fig.set_size_inches(13, 5)
    left, right = fig.subplots(1, 2)
    for path in paths:
        plot_curves(path, left, label=path if len(paths) > 1 else None)
        plot_curves(path, right, terms=True, label=path if len(paths) > 1 else None)
    return []

VIEWS = {  # each view: what draws it, and the PNG it writes unless --out says otherwise
    "latents": (view_latents, "latents_{i}_{j}.png"), "scatter": (view_scatter, "scatter_{i}_{j}.png"),
    "samples": (view_samples, "samples.png"), "interpolate": (view_interpolation, "interpolation.png"),
    "posterior": (view_posterior, "posterior.png"), "marginals": (view_marginals, "marginals.png"),
    "curves": (view_curves, "curves.png")}

def parse_args(argv=()):
    """The flags, from a list or a string of them; none means the defaults, in a notebook too."""
    p = argparse.ArgumentParser(prog="plot_latents.py", description="Draw a VAE saved by train.py. Each view writes a "
                                "PNG named after it (latents_0_1.png, samples.png, ...) unless --out says otherwise.")
    p.add_argument("--checkpoint", default="vae.pt", metavar="PATH", help="state_dict written by train.py (vae.pt)")
    p.add_argument("--i", type=int, default=0, metavar="I", help="latent dimension along the grid's columns (0)")
    p.add_argument("--j", type=int, default=1, metavar="J", help="latent dimension along the grid's rows (1)")
    p.add_argument("--n", type=int, default=10, metavar="N", help="digits a side, or a row's points or draws (10)")
    p.add_argument("--spacing", choices=("linear", "quantile"), default="linear", help="over [-L, L], or at quantiles")
    p.add_argument("--limit", type=float, default=2.0, metavar="L", help="the linear grid spans [-L, L], L <= 1000 (2)")
    p.add_argument("--out", metavar="PATH", help="PNG to write; {i} and {j} stand for the dimensions")
    p.add_argument("--show", action="store_true", help="also open a window")
    view = p.add_mutually_exclusive_group()
    for flag, what in (("scatter", "the test images' posterior means beside the grid, and their spread"),
                       ("samples", "decoded codes from the prior N(0, I), test images and reconstructions below"),
                       ("interpolate", "straight lines between the codes of test images of different digits"),
                       ("posterior", "test images, decode(mu) and decoded draws z ~ q(z|x) (question 2a)"),
                       ("marginals", "each latent dimension's means and codes against N(0, 1) (question 2b)")):
        view.add_argument(f"--{flag}", dest="view", action="store_const", const=flag, help=what + " (needs MNIST)")
    view.add_argument("--curves", nargs="*", metavar="HISTORY", help="learning curves from the CSVs train.py writes "
                      "(by default the one beside --checkpoint), several overlaid")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seeds --samples, --posterior, --interpolate (0)")
    p.add_argument("--data-dir", default="data", metavar="DIR", help="folder holding MNIST/raw (data)")
    args = p.parse_args(argv.split() if isinstance(argv, str) else list(argv))
    for flag, bad, wanted in (("n", args.n < 1, "a positive integer"), ("limit", not 0 < args.limit <= 1000,
                              "a number in (0, 1000]"), ("seed", not 0 <= args.seed < 2**64, "from 0 to 2**64 - 1")):
        if bad:
            p.error(f"argument --{flag}: must be {wanted}, got {getattr(args, flag)}")
    args.view = "curves" if args.curves is not None else args.view or "latents"
    return args

def main(argv=()):
    """The command line, callable from a notebook: it writes a PNG and leaves pyplot alone, but for --show."""
    args = parse_args(argv)
    draw, out = VIEWS[args.view]
    if args.spacing == "quantile" and args.view in ("latents", "scatter"):
        out = out.replace(".png", "_quantile.png")  # not to replace the linear grid's picture
    out = (args.out or out).replace("{i}", str(args.i)).replace("{j}", str(args.j))
    if os.path.isdir(out) or not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FileNotFoundError(f"--out {out}: give a file name in a folder that exists")
    out = out if os.path.splitext(out)[1] else out + ".png"  # as savefig writes it
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
    except BrokenPipeError:  # the Python docs' recipe for a closed stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except (ValueError, OSError) as error:
        sys.exit(f"plot_latents.py: error: {error}")
