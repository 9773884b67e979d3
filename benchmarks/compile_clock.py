"""Compile-time accounting shared by the benchmarks: XLA compilations and the seconds they
take (tracing, lowering, backend compile), from JAX's monitoring events, so a benchmark can
report warm time apart from compile time.

  from compile_clock import CLOCK   # beside the benchmark scripts
  CLOCK.install()                   # after JAX_PLATFORMS is settled; idempotent
  count, seconds = CLOCK.count, CLOCK.seconds  # before; the difference after is the call's
"""
from __future__ import annotations

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileClock:
  """Running totals: `count` backend compilations and `seconds` spent compiling."""

  def __init__(self):
    self.count = 0
    self.seconds = 0.0
    self._installed = False

  def install(self) -> "CompileClock":
    """Registers the listener (imports jax: call it after choosing the platform)."""
    if not self._installed:
      import jax

      jax.monitoring.register_event_duration_secs_listener(self._on_event)
      self._installed = True
    return self

  def _on_event(self, event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
      self.seconds += duration
    if event == COMPILE_EVENTS[-1]:
      self.count += 1


CLOCK = CompileClock()
