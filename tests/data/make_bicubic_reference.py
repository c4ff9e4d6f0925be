"""Write tests/data/bicubic_torch.npz: torch's antialiased bicubic downsampling on random images.

Run once (needs torch; the tests read the .npz and never import torch):

    python tests/data/make_bicubic_reference.py

Each case stores the NHWC input ``x_<name>`` and torch's output ``y_<name>`` of
``torch.nn.functional.interpolate(x, scale_factor=1/f, mode="bicubic", antialias=True)``
(``align_corners=False``), in float32.
"""

from pathlib import Path

import numpy as np
import torch

#: name -> (factor, H, W, C)
CASES = {"f2": (2, 8, 12, 1), "f3": (3, 12, 9, 2), "f4": (4, 16, 16, 3)}


def main() -> None:
    rng = np.random.default_rng(2024)
    out = {"torch_version": np.asarray(torch.__version__)}
    for name, (f, h, w, c) in CASES.items():
        x = rng.uniform(-1, 1, size=(2, h, w, c)).astype(np.float32)
        y = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=1 / f,
                                            mode="bicubic", antialias=True, align_corners=False)
        out[f"x_{name}"] = x
        out[f"y_{name}"] = y.permute(0, 2, 3, 1).numpy()
        out[f"factor_{name}"] = np.asarray(f)
    path = Path(__file__).with_name("bicubic_torch.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
