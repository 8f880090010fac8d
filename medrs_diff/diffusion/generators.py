"""Random streams for sampling: one shared ``torch.Generator`` or one generator per batch element.

A plain ``torch.Generator`` is one stream for the whole batch (what every sampler did before): the
noise of an element depends on what else is in the batch. :class:`SampleGenerators` holds one
generator per batch element, so element ``j``'s noise depends only on generator ``j``: a window of a
large image gets the same noise whether it is sampled alone or with three others. Batches are
repeated sample-major for ``n`` samples (``repeat_batch`` / ``sample_n`` in the methods): with ``k``
generators and a tensor of ``n * k`` rows, row ``r`` belongs to element ``r % k``, and generator ``j``
fills rows ``j, j + k, j + 2k, ...`` in one draw, in that order.

Every noise draw of the samplers, noise types and guidance goes through :func:`randn` / :func:`rand`
(or :func:`randn_like`), which take either kind (or None for torch's default stream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor


class SampleGenerators(Sequence[torch.Generator]):
    """One ``torch.Generator`` per batch element (all on one device); see the module docstring."""

    def __init__(self, generators: Iterable[torch.Generator]) -> None:
        gens = tuple(generators)
        if not gens:
            raise ValueError("SampleGenerators needs at least one torch.Generator")
        if not all(isinstance(g, torch.Generator) for g in gens):
            kinds = sorted({type(g).__name__ for g in gens if not isinstance(g, torch.Generator)})
            raise TypeError(f"SampleGenerators holds torch.Generator objects, got {kinds}")
        devices = {g.device for g in gens}
        if len(devices) > 1:
            raise ValueError(f"SampleGenerators must all be on one device, got {sorted(map(str, devices))}")
        self._gens = gens

    @classmethod
    def from_seeds(cls, seeds: Iterable[int], device: torch.device | str = "cpu") -> SampleGenerators:
        """One generator per seed, on ``device`` (where the noise is drawn)."""
        return cls(torch.Generator(device=device).manual_seed(int(s)) for s in seeds)

    @property
    def device(self) -> torch.device:
        return self._gens[0].device

    def __len__(self) -> int:
        return len(self._gens)

    def __getitem__(self, i):  # type: ignore[override]
        return self._gens[i]

    def __iter__(self) -> Iterator[torch.Generator]:
        return iter(self._gens)

    def __repr__(self) -> str:
        return f"SampleGenerators({len(self)} on {self.device})"


#: What the samplers accept as ``generator``: one stream, one stream per batch element, or None.
GeneratorLike = torch.Generator | SampleGenerators | None


def rows_per_element(n: int, generator: SampleGenerators) -> int:
    """Rows of an ``n``-row batch that each element's generator fills; refuses an ``n`` not a multiple
    of the number of generators (the batch and the generators would not line up)."""
    k = len(generator)
    if n % k:
        raise ValueError(f"a batch of {n} row(s) does not split over {k} per-element generators: the "
                         f"batch must be a multiple of {k} (sample-major repeats of the {k} elements)")
    return n // k


def per_element(shape: Sequence[int], generator: SampleGenerators, draw: Callable[[tuple[int, ...], Any], Tensor],
                *, device: Any = None, dtype: torch.dtype | None = None) -> Tensor:
    """Fill a tensor of ``shape`` element by element: rows ``j, j + k, ...`` from ``draw(rows_shape, g_j)``."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("per-element generators need a shape with a batch dimension, got a scalar")
    k = len(generator)
    rows = rows_per_element(shape[0], generator)
    parts = [draw((rows, *shape[1:]), g) for g in generator]
    out = torch.empty(shape, device=device if device is not None else parts[0].device,
                      dtype=dtype if dtype is not None else parts[0].dtype)
    for j, part in enumerate(parts):
        out[j::k] = part
    return out


def randn(shape: Sequence[int], generator: GeneratorLike = None, *, device: Any = None,
          dtype: torch.dtype | None = None) -> Tensor:
    """Standard normal noise of ``shape``; per element for :class:`SampleGenerators` (else ``torch.randn``)."""
    if isinstance(generator, SampleGenerators):
        return per_element(shape, generator, lambda s, g: torch.randn(s, generator=g, device=device, dtype=dtype),
                           device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def rand(shape: Sequence[int], generator: GeneratorLike = None, *, device: Any = None,
         dtype: torch.dtype | None = None) -> Tensor:
    """Uniform [0, 1) noise of ``shape``; per element for :class:`SampleGenerators` (else ``torch.rand``)."""
    if isinstance(generator, SampleGenerators):
        return per_element(shape, generator, lambda s, g: torch.rand(s, generator=g, device=device, dtype=dtype),
                           device=device, dtype=dtype)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


def randn_like(x: Tensor, generator: GeneratorLike = None) -> Tensor:
    """Standard normal noise shaped like ``x``, on its device and in its dtype."""
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def generator_device(generator: GeneratorLike) -> torch.device:
    """Where ``generator`` draws (the CPU for None)."""
    return generator.device if generator is not None else torch.device("cpu")


def on_cpu(generator: GeneratorLike) -> GeneratorLike:
    """``generator`` if it draws on the CPU, else CPU generator(s) seeded from it (one per element for
    :class:`SampleGenerators`), for draws that torch runs on the CPU only (e.g. gamma variates)."""
    if generator is None or generator.device.type == "cpu":
        return generator

    def seeded(g: torch.Generator) -> torch.Generator:
        seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
        return torch.Generator().manual_seed(seed)

    if isinstance(generator, SampleGenerators):
        return SampleGenerators(seeded(g) for g in generator)
    return seeded(generator)


__all__ = ["GeneratorLike", "SampleGenerators", "generator_device", "on_cpu", "per_element", "rand", "randn",
           "randn_like", "rows_per_element"]
