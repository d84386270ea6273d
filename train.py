"""Train the VAE on MNIST with Adam and save its state_dict.

    python train.py --epochs 10

Both MNIST splits are loaded once into tensors on the device. Each epoch shuffles
the training images with a seeded generator and slices them into batches, so no
DataLoader or per-image transform runs, and the loss is summed on the device and
read once per epoch. The checkpoint is rewritten atomically after every epoch.
"""
import argparse
import math
import os
import secrets
import sys
import time

import torch
from torchvision import datasets
from tqdm import tqdm

from vae import VAE, kl_divergence, negative_elbo, reconstruction_loss

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_mnist(data_dir, train=True, device="cpu"):
    """One MNIST split as (images, labels) on device: images (N, 784) float in [0, 1].

    Downloads into data_dir/MNIST/raw when the files are not there yet; raises
    FileNotFoundError, saying where to put them, when that fails.
    """
    try:
        split = datasets.MNIST(data_dir, train=train, download=True)
    except (RuntimeError, OSError) as error:
        raw = os.path.join(data_dir, "MNIST", "raw")
        reason = (str(error).strip() or type(error).__name__).splitlines()[-1]
        raise FileNotFoundError(
            f"MNIST is not in {raw} and could not be downloaded ({reason}); "
            f"put the four files {', '.join(MNIST_FILES)} there, "
            f"or point --data-dir at the folder that holds MNIST/raw") from None
    images = split.data.to(device).flatten(start_dim=1).float().div_(255)
    return images, split.targets.to(device)


def pick_device(name="auto"):
    """The torch.device for --device: auto takes cuda, then mps, then cpu."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ValueError(f"--device {name} was asked for, but this machine (torch "
                         f"{torch.__version__}) has no {name.upper()}; use --device cpu or auto")
    return torch.device(name)


def make_optimizer(model, lr):
    """Adam. On the CPU and CUDA, which have had its fused kernel since torch 2.4,
    it updates all parameters in one kernel; elsewhere (MPS) it takes torch's default.
    On CUDA it is capturable, so that a CUDA graph can record its step."""
    device = next(model.parameters()).device.type
    if device in ("cpu", "cuda"):
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=device == "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr)


def make_step(model, optimizer, beta=1.0, recon="mse"):
    """The training step: step(x) makes one Adam update on the batch x and returns
    the batch's summed loss, still on the device."""
    def step(x):
        x_prime, mu, logvar = model(x)
        loss = negative_elbo(x_prime, x, mu, logvar, beta, recon)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


class CUDAGraphStep:
    """A training step replayed from a CUDA graph, for batches of one fixed shape.

    The model is so small that on a GPU, launching its hundred-odd kernels one by
    one from Python takes about ten times longer than running them. A CUDA graph
    records one step's kernels once and launches them all in a single call, reading
    the batch from a fixed buffer. It computes exactly what step computes, fresh
    random z included, and like step returns a loss the caller can keep. CUDA asks
    for a few ordinary steps, on a side stream, before recording; batches of another
    shape (the last, partial one) run ordinarily.

    Gradients live in the graph's own buffers: after a replay, the parameters' .grad
    attributes may hold an older step's gradients (those of the last ordinary step).
    """

    def __init__(self, step, batch_shape, warmup=3):
        self.step, self.warmup = step, warmup
        self.x = torch.zeros(batch_shape, device="cuda")
        self.side = torch.cuda.Stream()
        self.graph = self.loss = None

    def __call__(self, x):
        if x.shape != self.x.shape:
            return self.step(x)
        self.x.copy_(x)
        if self.warmup:
            self.warmup -= 1
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                loss = self.step(self.x)
            torch.cuda.current_stream().wait_stream(self.side)
            return loss
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = self.step(self.x)
        self.graph.replay()
        return self.loss.clone()  # the next replay overwrites self.loss in place


def progress_stream():
    """Where the progress bar goes, or None for nowhere.

    In a Jupyter kernel (Colab's included), whose streams are no terminal but redraw
    a line in place: stdout, so that each epoch's line takes the place of the
    finished bar, as it does in a terminal. In a terminal: stderr. In a file, a pipe
    or CI: nowhere, since the log would fill with the bar's frames.
    """
    if type(sys.stdout).__module__.startswith("ipykernel."):
        return sys.stdout
    if sys.stderr is not None and sys.stderr.isatty():  # pythonw has no stderr at all
        return sys.stderr
    return None


def train_epoch(model, step, images, batch_size=128):
    """One pass of step over images in a random order, the last batch possibly smaller.
    The order is drawn from torch's global random state, as z is: seed it with
    torch.manual_seed for a run that repeats.

    Returns the mean training loss per image as a 0-d tensor on the device, so the
    caller decides when to wait for it.
    """
    model.train()
    order = torch.randperm(len(images)).to(images.device)
    total = torch.zeros((), device=images.device)
    batches, stream = range(0, len(images), batch_size), progress_stream()
    for start in tqdm(batches, unit="batch", leave=False, file=stream, disable=stream is None):
        total += step(images[order[start:start + batch_size]])
    return total / len(images)


@torch.no_grad()
def evaluate(model, images, batch_size=1000, recon="mse"):
    """The negative ELBO per image on images, as two 0-d tensors (reconstruction, KL),
    from one sample of z per image.

    z is drawn from a generator of its own, seeded with 0 on each call: the figures
    are then a function of the weights alone, and evaluating never moves the random
    state that training draws its shuffles and z from.
    """
    model.eval()
    generator = torch.Generator(images.device).manual_seed(0)
    reconstruction = torch.zeros((), device=images.device)
    kl = torch.zeros((), device=images.device)
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        mu, logvar = model.encode(x)
        x_prime = model.decode(model.reparameterize(mu, logvar, generator))
        reconstruction += reconstruction_loss(x_prime, x, recon)
        kl += kl_divergence(mu, logvar)
    return reconstruction / len(images), kl / len(images)


def save_checkpoint(model, path):
    """Write the state_dict, moved to the CPU so it loads anywhere, to path.

    It goes to a temporary file of its own beside path (so two runs saving to one
    path never write into each other's) and then replaces path in one step, so an
    interruption leaves either the old checkpoint or the new one. Syncing the file
    and then the folder makes that step survive a power cut.
    """
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        sync_folder(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sync_folder(folder):
    """Flush a folder's entries (a rename within it) to disk, where the OS allows:
    POSIX syncs a folder through a descriptor; Windows cannot open one."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse to sync a folder; the file itself is synced
    finally:
        os.close(fd)


def check_writable(path):
    """Refuse an --out that cannot be written before any time is spent training."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {path}: the folder {folder} does not exist; create it first")
    if os.path.isdir(path):
        raise IsADirectoryError(f"--out {path} is a folder; give a file name such as {path}/vae.pt")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"--out {path}: the folder {folder} is not writable")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, except where the default is None: that
    flag's help says what happens instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends in one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def silence_stdout():
    """After the reader of stdout has gone (`| head`), point stdout at the null
    device, so that Python's last flush on exit cannot fail with a traceback."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def checked(convert, test, wanted):
    """An argparse type: convert the text, then reject it unless test(value)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value
    return parse


positive_int = checked(int, lambda v: v > 0, "a positive integer")
positive_float = checked(float, lambda v: 0 < v < math.inf, "a positive finite number")
non_negative_float = checked(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")


def parse_args(argv=None):
    p = ArgumentParser(prog="train.py", description="Train the MNIST VAE and save its state_dict.",
                       formatter_class=HelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=10, metavar="N", help="passes over the training set")
    p.add_argument("--batch-size", type=positive_int, default=128, metavar="N", help="images per Adam step")
    p.add_argument("--lr", type=positive_float, default=1e-3, metavar="LR", help="Adam learning rate")
    p.add_argument("--z-dims", type=positive_int, default=4, metavar="N", help="latent dimensions")
    p.add_argument("--hidden", type=positive_int, default=128, metavar="N", help="units in each hidden layer")
    p.add_argument("--beta", type=non_negative_float, default=1.0, metavar="B",
                   help="weight of the KL term: 1 is the true ELBO, 0 a plain autoencoder")
    p.add_argument("--recon", choices=("mse", "bce"), default="mse",
                   help="reconstruction term: squared error (Gaussian) or cross-entropy (Bernoulli)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed for the weights, the shuffles and z (torch.manual_seed)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="where to train; auto takes cuda, then mps, then cpu")
    p.add_argument("--data-dir", default="data", metavar="DIR",
                   help="folder holding MNIST/raw (downloaded there if missing)")
    p.add_argument("--out", default="vae.pt", metavar="PATH", help="checkpoint file, rewritten after every epoch")
    return p.parse_args(argv)


def train(args):
    """Train as args say, saving after every epoch; returns the trained model.

    Ctrl-C and a closed stdout stop it with a message that says what was saved.
    """
    epoch = saved = 0

    def kept():
        return f"{args.out} holds epoch {saved}" if saved else f"nothing was saved to {args.out}"

    def stopped(what):
        return f"{what} {f'in epoch {epoch}' if epoch else 'before training began'}; {kept()}"

    try:
        device = pick_device(args.device)
        check_writable(args.out)
        threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
        print(f"device: {device}{threads}", flush=True)
        train_images, _ = load_mnist(args.data_dir, train=True, device=device)
        test_images, _ = load_mnist(args.data_dir, train=False, device=device)

        torch.manual_seed(args.seed)
        model = VAE(z_dims=args.z_dims, num_hidden=args.hidden).to(device)
        optimizer = make_optimizer(model, args.lr)
        step = make_step(model, optimizer, args.beta, args.recon)
        if device.type == "cuda":
            step = CUDAGraphStep(step, (args.batch_size, model.input_size))

        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            train_loss = train_epoch(model, step, train_images, args.batch_size)
            reconstruction, kl = evaluate(model, test_images, recon=args.recon)
            losses = torch.stack([train_loss, reconstruction, kl]).tolist()
            train_loss, reconstruction, kl = losses
            seconds = time.perf_counter() - start
            if not all(map(math.isfinite, losses)):
                raise FloatingPointError(f"the loss became {train_loss} in epoch {epoch}; "
                                         f"{kept()}. Try a lower --lr than {args.lr:g}")
            save_checkpoint(model, args.out)
            saved = epoch
            print(f"epoch {epoch}/{args.epochs}  train loss {train_loss:.2f}  "
                  f"test -ELBO {reconstruction + kl:.2f} (recon {reconstruction:.2f} + KL {kl:.2f})  "
                  f"{seconds:.2f}s  {len(train_images) / seconds:,.0f} img/s", flush=True)
        print(f"saved {args.out}", flush=True)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(stopped("interrupted")) from None
    except BrokenPipeError:
        raise BrokenPipeError(stopped("output closed")) from None
    return model


def main(argv=None):
    """The command line, callable from a notebook too: train.main(["--epochs", "3"])
    returns the trained model. User errors end in one line and a non-zero exit."""
    args = parse_args(argv)
    try:
        return train(args)
    except BrokenPipeError as closed:
        silence_stdout()
        sys.exit(f"train.py: {closed}")
    except (ValueError, OSError, FloatingPointError) as error:
        sys.exit(f"train.py: error: {error}")
    except KeyboardInterrupt as stop:
        print(f"\ntrain.py: {stop}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
