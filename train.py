"""Train the VAE on MNIST with Adam; save its state_dict and a CSV of every epoch's figures.

python train.py --epochs 10
python train.py --resume --epochs 30   # go on to epoch 30, as if never stopped
"""

import argparse
import contextlib
import math
import os
import statistics
import sys
import time

# MKL's strict reproducible mode: matrix products give the same bits on any number of threads,
# so the count chosen each epoch never changes the weights. MKL reads it at torch's first product.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch
from torchvision import datasets
from tqdm import tqdm

import vae

TRAINING_FLAGS = ("z_dims", "hidden", "lr", "beta", "recon", "batch_size", "binarize", "seed")


def train_epoch(
    model, optimizer, images, batch_size=128, beta=1.0, recon="mse", binarize=False, threads="auto"
):
    """One pass of Adam over the shuffled images, each batch's loss recon + beta * KL. Returns
    both terms per image, on the device. On the CPU it picks its threads as train.py does."""
    model.train()
    order = torch.randperm(len(images)).to(images.device)
    total = torch.zeros(2, device=images.device)
    threads = ThreadChoice(threads if images.device.type == "cpu" else None)
    for start in progress(range(0, len(images), batch_size)):
        x = images[order[start : start + batch_size]]
        if binarize:
            x = torch.bernoulli(x)  # pixels drawn anew as 0 or 1, each time an image is used
        with threads.timing():
            x_prime, mu, logvar = model(x)
            reconstruction = vae.reconstruction_loss(x_prime, x, recon)
            kl = vae.kl_divergence(mu, logvar)
            optimizer.zero_grad(set_to_none=True)
            (reconstruction + beta * kl).backward()
            optimizer.step()
        total += torch.stack([reconstruction.detach(), kl.detach()])
    return total / len(images)


@torch.no_grad()
def evaluate(model, images, recon="mse"):
    """The -ELBO's two terms per image, z from a generator of its own: figures of the weights."""
    model.eval()
    mu, logvar = vae.encode(model, images)
    z = vae.reparameterize(mu, logvar, torch.Generator(images.device).manual_seed(0))
    reconstruction = vae.reconstruction_loss(model.decoder(z), images, recon)
    return torch.stack([reconstruction, vae.kl_divergence(mu, logvar)]) / len(images)


def make_optimizer(model, lr):
    """Adam, its update fused into one kernel on the CPU and CUDA (torch 2.4 has none on MPS)."""
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)


def train(args, resumed=None):
    """Train as the flags say, from the start or on from `resumed` (a saved run), saving after
    each epoch. Ctrl-C stops it with a line saying what was saved; a notebook gets the model."""
    where, saved, model = "before training began", 0, None
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # until an epoch times its threads: loading gains nothing from more
    try:
        device = pick_device(args.device)
        check_out(args.out)
        train_images, _ = load_mnist(args.data_dir, train=True, device=device)
        test_images, _ = load_mnist(args.data_dir, train=False, device=device)
        if args.binarize:
            test_images = binarize_once(test_images)
        torch.manual_seed(args.seed)
        model = vae.VAE(z_dims=args.z_dims, num_hidden=args.hidden).to(device)
        optimizer = make_optimizer(model, args.lr)
        history = restore(resumed, model, optimizer, device) if resumed else []
        saved = len(history)
        if saved >= args.epochs:
            print(f"{args.out} holds epoch {saved} of --epochs {args.epochs}: nothing left to do")
            return model
        say_what_happens_to(args.out, saved, args.resume)
        print(device_line(device, args.threads))
        names = ("batch_size", "beta", "recon", "binarize", "threads")  # train_epoch's, as flags
        options = {name: getattr(args, name) for name in names}
        for epoch in range(saved + 1, args.epochs + 1):
            where = f"in epoch {epoch}"
            start = time.perf_counter()
            train_recon, train_kl = train_epoch(model, optimizer, train_images, **options).tolist()
            test_recon, test_kl = evaluate(model, test_images, args.recon).tolist()
            row = {
                "epoch": epoch,
                "train_loss": train_recon + args.beta * train_kl,
                "train_recon": train_recon,
                "train_kl": train_kl,
                "test_nelbo": test_recon + test_kl,
                "test_recon": test_recon,
                "test_kl": test_kl,
                "seconds": time.perf_counter() - start,
                "nats_left_out": vae.log_likelihood_constant(args.recon),  # what the row's
                "binarized": int(args.binarize),  # figures measure: see the README
            }
            for name in ("train_recon", "train_kl", "test_recon", "test_kl"):
                if not math.isfinite(row[name]):
                    kept = f"{counted(saved, 'good epoch')} kept in {args.out}; lower --lr"
                    raise FloatingPointError(f"{name} became {row[name]} {where}; {kept}")
            history.append({name: round(value, 4) for name, value in row.items()})
            save(model, optimizer, history, args)
            saved = epoch
            print(epoch_line(row, args, device))
        print(f"saved {args.out} and {beside(args.out, '.csv')}")
        if args.iwae and args.beta == 0:
            print("\n--beta 0: a plain autoencoder, whose bound on log p(x) means little: no table")
        elif args.iwae:
            where = "while bounding log p(x)"
            table = iwae_table(model, test_images, args.iwae, args.recon)
            print("", *bound_report(table, args.recon, args.binarize), sep="\n")
    except KeyboardInterrupt:
        kept = f"nothing was saved to {args.out}"
        if saved:
            kept = f"{args.out} and {beside(args.out, '.csv')} hold epoch {saved}"
        if 0 < saved < args.epochs:
            kept += "; --resume goes on from there"
        print(f"\ntrain.py: interrupted {where}; {kept}", file=sys.stderr)
        if not in_notebook():
            sys.exit(130)  # a script ends, as after any Ctrl-C; a notebook goes on
        if model is not None:
            print("returning the model as it is now", file=sys.stderr)
    finally:
        torch.set_num_threads(threads_before)
    return model


def epoch_line(row, args, device):
    train = "train -ELBO {train_loss:.2f} (recon {train_recon:.2f} + KL {train_kl:.2f})"
    if args.beta != 1:  # recon + beta * KL: what Adam minimised
        train = train.replace("-ELBO", "loss").replace("KL", "{beta:g} x KL")
    test = "test -ELBO {test_nelbo:.2f} (recon {test_recon:.2f} + KL {test_kl:.2f})"
    line = "  ".join(["epoch {epoch}/{epochs}", train, test, "{seconds:.2f}s"])
    line = line.format(**row, epochs=args.epochs, beta=args.beta)
    if device.type == "cpu":
        line += f" on {counted(torch.get_num_threads(), 'thread')}"
    return line


@torch.no_grad()
def iwae_table(model, images, k_max=50, recon="mse", batch_size=100):
    """{k: -L_k}: the mean bound on -log p(x) in nats for k = 1, 10, ... k_max, z seeded with 0."""
    model.eval()
    generator = torch.Generator(images.device).manual_seed(0)
    sizes = [10**p for p in range(len(str(k_max))) if 10**p < k_max] + [k_max]
    totals = torch.zeros(len(sizes), device=images.device)
    for start in progress(range(0, len(images), batch_size)):
        x = images[start : start + batch_size]
        totals -= torch.stack([vae.iwae_bound(model, x, k, recon, generator).sum() for k in sizes])
    return dict(zip(sizes, (totals / len(images)).tolist()))


def bound_report(table, recon="mse", binarized=False):
    """The lines train.py prints for iwae_table's table, and what its first and last rows say."""
    left_out = vae.log_likelihood_constant(recon)
    lines = ["test -log p(x) bounds per image, from k samples z ~ q(z|x) (-L_k; k = 1: the -ELBO):"]
    header, rows = "      k  -L_k, nats", [f"  {k:5d}  {v:10.2f}" for k, v in table.items()]
    if left_out:
        header += f"  less {left_out:.2f}, as above"
        rows = [f"{row}  {v - left_out:10.2f}" for row, v in zip(rows, table.values())]
    lines += [header, *rows]
    if len(table) > 1:
        gap = f"-L_1 - (-L_{max(table)}) = {table[1] - table[max(table)]:.2f} nats"
        lines.append(f"{gap}: on average the ELBO falls short of log p(x) by at least this")
    if not left_out and not binarized:
        lines.append("(--recon bce on grey pixels: not a likelihood; --binarize makes it one)")
    return lines


def load_mnist(data_dir, train=True, device="cpu"):
    """One MNIST split from data_dir/MNIST/raw (downloaded if missing): images (N, 784), labels."""
    raw = os.path.join(data_dir, "MNIST", "raw")
    files = [f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    if os.path.isfile(os.path.join(data_dir, files[2])):
        raise FileNotFoundError(f"--data-dir {data_dir} holds MNIST's files; give the folder above")
    try:
        split = datasets.MNIST(data_dir, train=train, download=True)
    except Exception:  # torchvision fails in many ways on a bad copy: say which files
        if not all(os.path.isfile(os.path.join(raw, name)) for name in files):
            fix = "copy its four files there (README: Troubleshooting)"
            raise FileNotFoundError(f"no MNIST in {raw}, and no download: {fix}") from None
        names = " or ".join(files[:2] if train else files[2:])
        raise ValueError(f"{names} in {raw} is damaged: copy it there again, unzipped") from None
    return split.data.to(device).flatten(start_dim=1).float().div_(255), split.targets.to(device)


def binarize_once(images, seed=0):
    """Each pixel drawn once as 0 or 1 (its intensity the probability): the same in every run."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images.cpu(), generator=generator).to(images.device)


def parse_args(argv=(), saved=None):
    """The flags, from a list or a string of them; none means the defaults, in a notebook too.
    `saved`, a run's TRAINING_FLAGS, replaces their defaults."""
    count = checked(int, lambda v: v > 0, "a positive integer")
    rate = checked(float, lambda v: 0 < v < math.inf, "a positive number")
    weight = checked(float, lambda v: 0 <= v < math.inf, "a number >= 0")
    samples = checked(int, lambda v: v >= 0, "an integer >= 0")
    seed = checked(int, lambda v: 0 <= v < 2**64, "from 0 to 2**64 - 1")
    threads = checked(lambda t: t if t == "auto" else int(t), lambda v: v != 0, "auto or a count")
    p = ArgumentParser(prog="train.py")
    p.add_argument("--epochs", type=count, default=10, help="passes over the data, in all")
    p.add_argument("--resume", action="store_true", help="go on with the run saved at --out")
    p.add_argument("--batch-size", type=count, default=128, help="images per Adam step")
    p.add_argument("--lr", type=rate, default=1e-3, help="Adam's learning rate")
    p.add_argument("--z-dims", type=count, default=4, help="latent dimensions")
    p.add_argument("--hidden", type=count, default=128, help="units per hidden layer")
    p.add_argument("--beta", type=weight, default=1.0, help="the KL's weight: 0, an autoencoder")
    p.add_argument("--recon", choices=("mse", "bce"), default="mse", help="the decoder's loss")
    p.add_argument("--binarize", action="store_true", help="pixels drawn as 0 or 1 (for nats)")
    p.add_argument("--iwae", type=samples, default=50, help="bound log p(x) by up to IWAE z")
    p.add_argument("--seed", type=seed, default=0, help="seeds the weights, batches, z, pixels")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--threads", type=threads, default="auto", help="auto: the fastest of 1, 2, 4")
    p.add_argument("--data-dir", default="data", help="the folder that holds MNIST/raw")
    p.add_argument("--out", default="vae.pt", help="checkpoint; beside it .csv and .resume.pt")
    argv = argv.split() if isinstance(argv, str) else list(argv)
    return p.parse_args(argv, argparse.Namespace(**saved) if saved else None)


def main(argv=()):
    """train.main(["--epochs", "3"]) in a notebook: the trained model (after Ctrl-C, as it is)."""
    args = parse_args(argv)
    resumed = load_resume_state(args.out) if args.resume else None
    if resumed:  # the flags that shaped the saved run's weights, and its --epochs, as defaults
        args = parse_args(argv, {**resumed["flags"], "epochs": resumed["epochs"]})
        for name, value in resumed["flags"].items():
            flag = "--" + name.replace("_", "-")
            if getattr(args, name) != value:
                fix = f"leave {flag} out, or give --out a new name for a new run"
                raise ValueError(f"--resume: {args.out} was trained with {flag} {value}; {fix}")
    return train(args, resumed)


# ---------------------------------------------------------------- nothing below is about VAEs


def pick_device(name="auto"):
    """The torch.device for --device: auto takes cuda, then mps, then cpu."""
    have = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        name = next((n for n in have if have[n]), "cpu")
    elif name != "cpu" and not have[name]:
        raise ValueError(f"--device {name}: torch {torch.__version__} sees no {name.upper()} here")
    return torch.device(name)


def device_line(device, threads):
    if device.type != "cpu":
        return f"device: {device}"
    if threads != "auto":
        return f"device: cpu ({counted(threads, 'thread')})"
    counts = " and ".join(map(str, ThreadChoice().counts))
    return f"device: cpu (threads: each epoch runs on the fastest of {counts}, timed first)"


class ThreadChoice:
    """An epoch's first steps run on 1, 2 and 4 threads (as far as the CPUs go) in turn, timed;
    the rest on the fastest. A step's threads wait for the slowest, so while another program holds
    a core one thread can be many times faster than two. threads=None leaves torch's setting."""

    def __init__(self, threads="auto"):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.counts = [n for n in (1, 2, 4) if n <= cpus] if threads == "auto" else [threads]
        self.queue = self.counts * 3 if threads else []  # each count timed three times, in turn
        self.times = {n: [] for n in self.counts}

    @contextlib.contextmanager
    def timing(self):
        if self.queue:
            torch.set_num_threads(self.queue[0])
        n, start = torch.get_num_threads(), time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        if self.queue:
            self.queue.pop(0)
            self.times[n].append(seconds)
            if seconds > 3 * min(min(t) for t in self.times.values() if t):  # time it no more
                self.queue = [m for m in self.queue if m != n]
            if not self.queue:  # each count was timed at least once
                torch.set_num_threads(
                    min(self.times, key=lambda m: statistics.median(self.times[m]))
                )
        elif n > 1 and self.times.get(1) and seconds > 3 * min(self.times[1]):
            torch.set_num_threads(1)  # the machine got busier than its first steps showed


def counted(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def checked(convert, test, wanted):
    """An argparse type: convert the text, then refuse it unless test(value) holds."""

    def parse(text):
        with contextlib.suppress(ValueError):
            value = convert(text)
            if test(value):
                return value
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")

    return parse


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, with defaults in --help, and a ValueError for a bad flag in a notebook."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)

    def error(self, message):
        if in_notebook():
            raise ValueError(f"{self.prog}: {message}")
        super().error(message)


def in_notebook():
    return type(sys.stdout).__module__.startswith("ipykernel.")


def progress(iterable):
    """A bar, erased when done: on stdout in a notebook, on stderr in a terminal, none in a log."""
    if in_notebook():
        return tqdm(iterable, unit="batch", leave=False, file=sys.stdout)
    return tqdm(iterable, unit="batch", leave=False, file=sys.stderr, disable=None)


def beside(checkpoint, ending):
    """A file kept beside a checkpoint: for vae.pt, vae.csv (the history) or vae.resume.pt."""
    return os.path.splitext(checkpoint)[0] + ending


def say_what_happens_to(out, saved, resume):
    """Before the first epoch: the run this goes on with, or the one it is about to replace."""
    if saved:
        print(f"resuming {out} after epoch {saved}")
    elif resume:
        print(f"--resume: no run saved at {out}; starting a new one")
    elif os.path.exists(out):
        epochs = "epochs unknown"
        with contextlib.suppress(OSError, UnicodeDecodeError), open(beside(out, ".csv")) as f:
            epochs = counted(len(f.readlines()) - 1, "epoch")
        keep = "to keep it, stop now and go on with --resume, or give --out a new name"
        print(f"note: this run replaces {out} ({epochs}) after its first epoch; {keep}")


def check_out(path):
    """Refuse an --out that cannot be written, before an epoch is spent on it."""
    if os.path.isdir(path) or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise OSError(f"--out {path}: give a file name in a folder that exists")


def save(model, optimizer, history, args):
    """The checkpoint (a state_dict on the CPU, to load anywhere), its history, then what --resume
    needs: each replaced whole. Whatever stops this, the last holds the earliest epoch."""
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    if len(history) == 1:  # a new run's first save: an earlier run's state no longer matches
        with contextlib.suppress(FileNotFoundError):
            os.remove(beside(args.out, ".resume.pt"))
    write_atomically(args.out, lambda f: torch.save(weights, f))
    rows = [history[0].keys()] + [row.values() for row in history]
    text = "".join(",".join(map(str, row)) + "\n" for row in rows)
    write_atomically(beside(args.out, ".csv"), lambda f: f.write(text.encode()))
    device = next(model.parameters()).device
    random = {"cpu": torch.get_rng_state()}  # the shuffles; z and pixels too on the CPU
    if device.type != "cpu":  # z and pixels drawn on a GPU
        random[device.type] = torch.get_device_module(device).get_rng_state()
    state = {
        "epochs": args.epochs,
        "flags": {name: getattr(args, name) for name in TRAINING_FLAGS},
        "history": history,
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "random": random,
    }
    write_atomically(beside(args.out, ".resume.pt"), lambda f: torch.save(state, f))


def load_resume_state(out):
    """The run saved at out for --resume, or None where there is none."""
    path, fix = beside(out, ".resume.pt"), "train anew without --resume"
    if os.path.exists(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise ValueError(f"--resume: {path} is damaged; {fix}") from None
    if os.path.exists(out):  # a checkpoint, but nothing to go on with it exactly
        raise FileNotFoundError(f"--resume: {out} has no {path} beside it to go on from; {fix}")
    return None


def restore(resumed, model, optimizer, device):
    """Put a saved run's weights, Adam's moments and random state back; returns its history."""
    model.load_state_dict(resumed["model"])
    optimizer.load_state_dict(resumed["optimizer"])
    torch.set_rng_state(resumed["random"]["cpu"])
    if device.type in resumed["random"] and device.type != "cpu":  # saved on this kind of GPU
        torch.get_device_module(device).set_rng_state(resumed["random"][device.type])
    return resumed["history"]


def write_atomically(path, write):
    """Replace path with what write(f) writes, never half of it: written beside it, then renamed."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        for wait in (0.1, 0.2, 0.4, 0.8, 1.6):  # Windows refuses while a scanner holds path
            try:
                return os.replace(tmp, path)
            except PermissionError:
                time.sleep(wait)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # each line reaches a log or a pipe as printed
    try:
        main(sys.argv[1:])
    except (ValueError, OSError, FloatingPointError) as error:
        sys.exit(f"train.py: error: {error}")
