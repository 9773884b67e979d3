"""Cloud TPU generations: HBM, peak bfloat16 FLOP/s and HBM bandwidth per chip.

The numbers are Google's published per-chip specifications, each from the generation's
"System architecture" table in the Cloud TPU documentation (page cited beside each entry).
Where a page says "GB" we take 10^9 bytes, and GiB as 2^30: the smaller reading, so a fit
check against it errs on the side of "does not fit".

`launch/aot.py` divides a chip's numbers among the JAX devices it shows: a v5p chip's two
TensorCores are one (megacore) device, while a v4 topology description lists each of a
chip's two TensorCores as a device of its own (half the chip's HBM and FLOP/s each).
"""
from __future__ import annotations

import dataclasses

GB = 10**9
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class TpuSpec:
  """One TPU generation, per chip."""

  name: str  # the topology prefix: "v5p" in "v5p:4x4x4"
  device_kind: str  # what `jax.Device.device_kind` reports for it
  hbm_bytes: int
  peak_bf16_flops: float  # FLOP/s
  hbm_bandwidth: float  # bytes/s
  cores_per_chip: int  # TensorCores
  three_d: bool  # topology names have three dimensions ("v5p:4x4x4") or two ("v6e:8x8")
  source: str  # the documentation page of the numbers

  def per_device(self, cores_per_device: int) -> "TpuSpec":
    """This spec scaled to a device of `cores_per_device` TensorCores."""
    if not 1 <= cores_per_device <= self.cores_per_chip or self.cores_per_chip % cores_per_device:
      raise ValueError(f"{self.name}: a device of {cores_per_device} TensorCores does not divide "
                       f"a chip of {self.cores_per_chip}")
    f = cores_per_device / self.cores_per_chip
    return dataclasses.replace(self, hbm_bytes=int(self.hbm_bytes * f),
                               peak_bf16_flops=self.peak_bf16_flops * f,
                               hbm_bandwidth=self.hbm_bandwidth * f, cores_per_chip=cores_per_device)


SPECS: dict[str, TpuSpec] = {s.name: s for s in (
    # https://cloud.google.com/tpu/docs/v3 : 123 TFLOPs (bf16), HBM2 32 GiB at 900 GBps,
    # two TensorCores per chip.
    TpuSpec("v3", "TPU v3", 32 * GIB, 123e12, 900 * GB, 2, False,
            "https://cloud.google.com/tpu/docs/v3"),
    # https://cloud.google.com/tpu/docs/v4 : 275 teraflops (bf16 or int8), HBM2 32 GiB at
    # 1200 GBps, two TensorCores per chip.
    TpuSpec("v4", "TPU v4", 32 * GIB, 275e12, 1200 * GB, 2, True,
            "https://cloud.google.com/tpu/docs/v4"),
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOPs (bf16), HBM2 16 GB at 819 GBps,
    # one TensorCore per chip.
    TpuSpec("v5e", "TPU v5 lite", 16 * GB, 197e12, 819 * GB, 1, False,
            "https://cloud.google.com/tpu/docs/v5e"),
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOPs (bf16), HBM2e 95 GB at 2765 GBps,
    # two TensorCores per chip (one megacore device).
    TpuSpec("v5p", "TPU v5", 95 * GB, 459e12, 2765 * GB, 2, True,
            "https://cloud.google.com/tpu/docs/v5p"),
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOPs (bf16), HBM 32 GB at 1638 GBps,
    # one TensorCore per chip.
    TpuSpec("v6e", "TPU v6 lite", 32 * GB, 918e12, 1638 * GB, 1, False,
            "https://cloud.google.com/tpu/docs/v6e"),
)}


def generation(device_kind: str) -> TpuSpec:
  """The spec of a `jax.Device.device_kind` ("TPU v5 lite" -> v5e)."""
  for spec in SPECS.values():
    if spec.device_kind == device_kind:
      return spec
  raise ValueError(f"no TPU generation has device kind {device_kind!r}; known: "
                   f"{sorted(s.device_kind for s in SPECS.values())}")


def parse_topology(topology: str) -> tuple[TpuSpec, str]:
  """("v5p:4x4x4") -> (the v5p spec, "4x4x4"); ValueError naming the known generations."""
  gen, sep, shape = topology.partition(":")
  if not sep or not shape or any(not p.isdigit() for p in shape.split("x")):
    raise ValueError(f"topology must look like 'v5p:4x4x4' or 'v6e:8x8' (generation:shape), "
                     f"got {topology!r}")
  if gen not in SPECS:
    raise ValueError(f"topology {topology!r}: unknown TPU generation {gen!r}; known: "
                     f"{sorted(SPECS)}")
  return SPECS[gen], shape
