"""The engine's sliding window against ``monai.inferers.sliding_window_inference``: bit-for-bit equality of the blended
output of a small random conv net on multi-window inputs (window batches, overlaps, both modes, an input smaller than
the window). Run from the repository root:

    PYTHONPATH=CADExtension .venv/bin/python benchmarks/windows_parity.py
"""

import torch
from monai.inferers import sliding_window_inference

from cadcore.segmentation.windows import sliding_window

CASES = [((60, 70, 50), (40, 56, 40), 0.5, "gaussian", 2), ((97, 81, 33), (32, 32, 16), 0.25, "gaussian", 4),
         ((30, 20, 50), (40, 56, 40), 0.5, "constant", 1), ((64, 64, 64), (24, 24, 24), 0.75, "gaussian", 3)]


def main() -> None:
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU(0.1),
                                  torch.nn.Conv3d(4, 3, 3, padding=1)).eval()
    with torch.no_grad():
        for shape, roi, overlap, mode, batch in CASES:
            inputs = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(3))
            theirs = sliding_window_inference(inputs, roi, batch, network, overlap, mode=mode)
            ours = sliding_window(inputs, roi, batch, network, overlap, mode)
            verdict = "identical" if torch.equal(ours, theirs) else f"max diff {(ours - theirs).abs().max().item()}"
            print(f"input {shape}, window {roi}, overlap {overlap}, {mode}, batch {batch}: {verdict}")


if __name__ == "__main__":
    main()
