"""Shapes drawn in code: the `--dataset synthetic` images of every task, learnable and offline.

Each shape kind has its own outline (disk, square, diamond, ring, plus, triangle, bars) and the
kinds after the eighth also their own colour, so a model can tell every kind apart; position, size,
colour shade and background noise vary, so it has to learn to. A sample is drawn from its own seed:
the same index gives the same image in every process, epoch and run.
"""

import torch

OUTLINES = 8  # distinct outlines; kinds beyond them repeat an outline in another colour
PALETTE_SEED = 1234  # the kinds' colours are the same in every split and run


def outline(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Which points (u, v), in units of the shape's radius around its centre, lie in outline
    `kind` (taken modulo OUTLINES)."""
    radius = (u * u + v * v).sqrt()
    outlines = (
        lambda: radius <= 1,
        lambda: (u.abs() <= 0.8) & (v.abs() <= 0.8),
        lambda: u.abs() + v.abs() <= 1,
        lambda: (radius >= 0.55) & (radius <= 1),
        lambda: ((u.abs() <= 0.3) | (v.abs() <= 0.3)) & (u.abs() <= 1) & (v.abs() <= 1),
        lambda: (v <= 0.8) & (2 * u.abs() <= v + 1),
        lambda: (u.abs() <= 1) & (v.abs() <= 0.35),
        lambda: (u.abs() <= 0.35) & (v.abs() <= 1),
    )
    return outlines[kind % OUTLINES]()


def palette(kinds: int, channels: int) -> torch.Tensor:
    """(kinds, channels) colours in [0.35, 1]: one colour per group of OUTLINES kinds."""
    generator = torch.Generator().manual_seed(PALETTE_SEED)
    groups = torch.rand(kinds // OUTLINES + 1, channels, generator=generator) * 0.65 + 0.35
    return groups[torch.arange(kinds) // OUTLINES]


def draw(
    kinds: list[int], size: int, channels: int, colours: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, list[torch.Tensor], list[list[int]]]:
    """An image (channels, size, size) uint8 with one shape of each of `kinds` on a noisy dark
    background, later shapes over earlier ones; with each shape's pixel mask (as drawn, before
    later shapes cover part of it) and box [x0, y0, x1, y1] in pixels."""
    image = torch.rand(channels, size, size, generator=generator) * 0.25
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    masks, boxes = [], []
    for kind in kinds:
        radius = size * (0.12 + 0.14 * torch.rand((), generator=generator).item())
        centre = radius + (size - 2 * radius) * torch.rand(2, generator=generator)
        u = (grid[None, :] - centre[0]) / radius
        v = (grid[:, None] - centre[1]) / radius
        mask = outline(kind, u, v)
        if not mask.any():  # too small to cover a pixel centre: its centre pixel
            column, row = centre.long().clamp(0, size - 1).tolist()
            mask[row, column] = True
        shade = 0.8 + 0.2 * torch.rand((), generator=generator)
        image = torch.where(mask, colours[kind, :, None, None] * shade, image)
        masks.append(mask)
        rows, columns = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        boxes.append([columns.min().item(), rows.min().item(), columns.max().item() + 1])
        boxes[-1].append(rows.max().item() + 1)
    return (image * 255).round().to(torch.uint8), masks, boxes
