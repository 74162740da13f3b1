"""MTCNN's three networks (P-, R-, O-Net) in torch and their weight files: facenet-pytorch's
``data/{pnet,rnet,onet}.pt`` (MIT), found without importing facenet-pytorch and read with
``torch.load(weights_only=True)``. Used by the ``mtcnn`` detector (deid.faces.mtcnn_backend) and by
CenterFace's small-face cascade, which asks O-Net whether a small crop is a face."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

NETS = ("pnet", "rnet", "onet")
INSTALL_HINT = ("install the weights with `pip install --no-deps facenet-pytorch==2.6.0` (`make install` does), "
                "or set detect.model_dir to a folder holding pnet.pt, rnet.pt and onet.pt")

#: Layers of the three networks, named as in facenet-pytorch's state dicts. ``conv``/``dense``
#: layers are each followed by the PReLU of the same number; ``pool`` is a ceil-mode max pool
#: (kernel, stride); ``flat`` flattens in (w, h, c) order, as the Caffe-era weights expect.
#: Heads: (name, inputs, outputs); the 2-way head is a softmax (the face probability).
LAYERS = {
    "pnet": ([("conv", "conv1", 3, 10, 3), ("pool", 2, 2), ("conv", "conv2", 10, 16, 3), ("conv", "conv3", 16, 32, 3)],
             [("conv4_2", 32, 4), ("conv4_1", 32, 2)]),
    "rnet": ([("conv", "conv1", 3, 28, 3), ("pool", 3, 2), ("conv", "conv2", 28, 48, 3), ("pool", 3, 2),
              ("conv", "conv3", 48, 64, 2), ("flat",), ("dense", "dense4", 576, 128)],
             [("dense5_2", 128, 4), ("dense5_1", 128, 2)]),
    "onet": ([("conv", "conv1", 3, 32, 3), ("pool", 3, 2), ("conv", "conv2", 32, 64, 3), ("pool", 3, 2),
              ("conv", "conv3", 64, 64, 3), ("pool", 2, 2), ("conv", "conv4", 64, 128, 2), ("flat",),
              ("dense", "dense5", 1152, 256)],
             [("dense6_2", 256, 4), ("dense6_3", 256, 10), ("dense6_1", 256, 2)]),
}


def weight_files(model_dir: str | None = None) -> dict[str, str]:
    """``{"pnet": path, "rnet": path, "onet": path}`` from ``model_dir`` or, by default, the
    installed facenet-pytorch package's ``data`` folder (found without importing it)."""
    if model_dir:
        folder = os.path.abspath(os.path.expanduser(model_dir))
        where = f"{model_dir} (detect.model_dir)"
    else:
        spec = importlib.util.find_spec("facenet_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"detect.backend mtcnn needs the MTCNN weights of facenet-pytorch: {INSTALL_HINT}")
        folder = os.path.join(next(iter(spec.submodule_search_locations)), "data")
        where = f"{folder} (the installed facenet-pytorch)"
    files = {n: os.path.join(folder, f"{n}.pt") for n in NETS}
    missing = [os.path.basename(p) for p in files.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{where}: no {', '.join(missing)}; {INSTALL_HINT}")
    return files


def _net(name: str):
    """One of the three networks, untrained; outputs its heads in :data:`LAYERS` order."""
    import torch
    from torch import nn

    layers, heads = LAYERS[name]
    flat = any(kind == "flat" for kind, *_ in layers)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            for kind, *a in layers:
                if kind in ("conv", "dense"):
                    setattr(self, a[0], nn.Conv2d(*a[1:]) if kind == "conv" else nn.Linear(*a[1:]))
                    setattr(self, "prelu" + a[0][-1], nn.PReLU(a[2]))
            for head, n_in, n_out in heads:
                setattr(self, head, nn.Linear(n_in, n_out) if flat else nn.Conv2d(n_in, n_out, 1))

        def forward(self, x):
            x = x.contiguous(memory_format=torch.channels_last)  # CPU: ~1.5x faster than NCHW
            for kind, *a in layers:
                if kind == "pool":
                    x = nn.functional.max_pool2d(x, a[0], a[1], ceil_mode=True)
                elif kind == "flat":
                    x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
                else:
                    x = getattr(self, "prelu" + a[0][-1])(getattr(self, a[0])(x))
            outs = [getattr(self, head)(x) for head, *_ in heads]
            return tuple(torch.softmax(o, 1) if h[2] == 2 else o for o, h in zip(outs, heads))

    # the layers' random initialisation is overwritten by the weights: drawn from a forked
    # generator, so that building a detector leaves torch's global random state as it was
    with torch.random.fork_rng(devices=[]):
        return Net()



def onet_file(model_dir: str | None = None) -> str:
    return weight_files(model_dir)["onet"]


def load_onet(model_dir: str | None = None):
    """MTCNN's O-Net (facenet-pytorch's onet.pt; deid.faces.mtcnn_backend's network and loading)."""
    import torch

    path = weight_files(model_dir)["onet"]
    net = _net("onet")
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise ValueError(f"{path}: not facenet-pytorch's onet state dict ({exc})") from exc
    return net.eval().to(memory_format=torch.channels_last)


def onet_probs(net, rgb: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """O-Net's face probability for each box of ``rgb``: the square of the box's longer side
    (grown by ``margin`` of it on each side), centred on the box, warped to 48 x 48 (bilinear,
    replicated border), pixels ``(x - 127.5) / 128``, as MTCNN's last stage sees its crops."""
    import cv2
    import torch

    if not len(boxes):
        return np.zeros(0)
    crops = []
    for x0, y0, x1, y1 in boxes:
        s = 48.0 / (max(x1 - x0, y1 - y0) * (1 + 2 * margin))
        m = np.array([[s, 0, 24 - s * (x0 + x1) / 2], [0, s, 24 - s * (y0 + y1) / 2]])
        crops.append(cv2.warpAffine(rgb, m, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    x = torch.from_numpy(np.stack(crops).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        return net((x - 127.5) * 0.0078125)[-1][:, 1].numpy().astype(np.float64)
