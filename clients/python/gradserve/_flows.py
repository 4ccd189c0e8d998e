"""Continuous normalizing flows: ``Client.sample`` (``POST /v1/integrate``) and ``Client.logprob``
(``POST /v1/logprob``), a base class of :class:`gradserve.Client` that goes through its compute pipeline
(``_compute``: planned by ``_planning``, split over requests and servers, merged by ``_merging``).

Both integrate ``dx/dt = v(x, t)`` (the model is the velocity ``v``; with inputs ``["x", "t"]`` the
integration time is its t, the same for the whole batch) along ``time_grid`` on the server, with
flow_matching's ``ODESolver`` / torchdiffeq's conventions: ``method`` ``"dopri5"`` (adaptive, ``atol`` and
``rtol``), ``"euler"``, ``"midpoint"`` or ``"rk4"`` (fixed step: one step per grid interval, or
``step_size`` steps with the outputs at the grid times by linear interpolation).
"""

from __future__ import annotations

from typing import Any, Sequence

from .result import Result
from .tensors import is_torch_tensor

#: The solvers the server knows (torchdiffeq's names; ``rk4`` is torchdiffeq's 3/8 rule).
METHODS = ("dopri5", "euler", "midpoint", "rk4")


def _grid(time_grid: Any) -> list[float] | None:
    """A time grid (list, tuple, numpy or torch 1-D) as a list of floats for the JSON part of the request."""
    if time_grid is None:
        return None
    if is_torch_tensor(time_grid):
        time_grid = time_grid.detach().cpu().tolist()
    elif hasattr(time_grid, "tolist"):
        time_grid = time_grid.tolist()
    if not isinstance(time_grid, (list, tuple)):
        raise TypeError(f"time_grid is a sequence of times, got {type(time_grid).__name__}")
    return [float(v) for v in time_grid]


def _solver_fields(
    time_grid: Any,
    method: str | None,
    step_size: float | None,
    atol: float | None,
    rtol: float | None,
    max_steps: int | None,
    return_intermediates: bool,
) -> dict[str, Any]:
    """The solver's fields of the request; what is None is left to the server's default."""
    fields: dict[str, Any] = {}
    grid = _grid(time_grid)
    if grid is not None:
        fields["time_grid"] = grid
    if method is not None:
        fields["method"] = method
    for key, v in (("step_size", step_size), ("atol", atol), ("rtol", rtol)):
        if v is not None:
            fields[key] = float(v)
    if max_steps is not None:
        fields["max_steps"] = int(max_steps)
    if return_intermediates:
        fields["return_intermediates"] = True
    return fields


class _Flows:
    """``sample`` and ``logprob`` (a base class of :class:`gradserve.Client`, whose ``_compute`` they call)."""

    _compute: Any  # Client._compute: planned, sent, merged

    def sample(
        self,
        model: Any,
        x0: Any,
        *,
        time_grid: Sequence[float] | Any = None,
        method: str | None = None,
        step_size: float | None = None,
        atol: float | None = None,
        rtol: float | None = None,
        max_steps: int | None = None,
        return_intermediates: bool = False,
        batch_size: int | None = None,
        transport: str | None = None,
    ) -> Result:
        """Integrates ``dx/dt = v(x, t)`` from ``x0`` (``[B, D]``, the state at ``time_grid[0]``) along
        ``time_grid`` (default ``[0, 1]``; increasing or decreasing): flow_matching's
        ``ODESolver(v).sample(x0, step_size, method, atol, rtol, time_grid, return_intermediates)``.

        ``method``: ``"dopri5"`` (server default; adaptive, ``atol``/``rtol`` default 1e-5), ``"euler"``,
        ``"midpoint"``, ``"rk4"`` (``step_size``: torchdiffeq's fixed grid; default one step per grid
        interval). ``max_steps``: the server's step budget (default 10000; exceeding it is 422).

        Answer (a :class:`Result`): ``x`` ``[B, D]`` (the state at ``time_grid[-1]``), ``trajectory``
        ``[T, B, D]`` (with ``return_intermediates``: the state at every grid time, ``trajectory[0]`` =
        ``x0``), ``nfe`` (velocity evaluations), ``steps`` (``{"accepted", "rejected"}``), ``timing``.

        A batch split over several requests (``batch_size``, the server's limits, several URLs) is solved
        per request: with dopri5 each part gets its own step sizes (the error norm is over the part's
        rows), so the answer differs from the unsplit one within the tolerances; fixed-step methods are
        unaffected. ``nfe`` and ``steps`` are then summed over the requests, and ``parts`` lists each
        request's ``rows``, ``nfe`` and ``steps`` (in order), e.g. ``max(p.nfe for p in r.parts)`` for the
        longest solve."""
        fields = _solver_fields(time_grid, method, step_size, atol, rtol, max_steps, return_intermediates)
        return self._compute("integrate", model, {"inputs.x": x0}, fields, batch_size, transport)

    def logprob(
        self,
        model: Any,
        x1: Any,
        *,
        time_grid: Sequence[float] | Any = None,
        method: str | None = None,
        step_size: float | None = None,
        atol: float | None = None,
        rtol: float | None = None,
        max_steps: int | None = None,
        divergence: str = "exact",
        probes: int | None = None,
        seed: int | None = None,
        noise: str | None = None,
        return_intermediates: bool = False,
        batch_size: int | None = None,
        transport: str | None = None,
    ) -> Result:
        """The log-likelihood of data ``x1`` (``[B, D]``, at ``time_grid[0]``) under the flow with a
        standard normal base: the ODE and ``∫ div v dt`` solved together along ``time_grid`` (default
        ``[1, 0]``), as flow_matching's ``ODESolver(v).compute_likelihood(x1, log_p0, …)`` with
        ``log_p0(x) = −½‖x‖² − (D/2)·log 2π``.

        ``divergence``: ``"exact"`` (the trace of ``∂v/∂x``, default) or ``"hutchinson"`` with ``probes``
        (server default 1) probe vectors of ``noise`` ``"rademacher"`` (default) or ``"gaussian"``, drawn
        once per solve from ``seed`` (default 0): the same seed gives the same answer. Solver fields as in
        :meth:`sample`; dopri5 controls the error of x and the log-density together (torchdiffeq's mixed
        norm).

        Answer: ``logprob`` ``[B]`` = ``log_p0(x0) + log_det``, ``x0`` ``[B, D]`` (the state at
        ``time_grid[-1]``), ``log_det`` ``[B]`` (``∫ div v dt`` along the grid), ``trajectory``
        ``[T, B, D]`` with ``return_intermediates``, ``nfe``, ``steps``, ``timing``. A split batch is
        solved per request (see :meth:`sample`; ``nfe``/``steps`` summed, ``parts`` per request), and a
        Hutchinson estimate then draws its probes per request: as unbiased, not the same numbers."""
        fields = _solver_fields(time_grid, method, step_size, atol, rtol, max_steps, return_intermediates)
        if divergence is not None:
            fields["divergence"] = divergence
        if probes is not None:
            fields["probes"] = int(probes)
        if seed is not None:
            fields["seed"] = int(seed)
        if noise is not None:
            fields["noise"] = noise
        return self._compute("logprob", model, {"inputs.x": x1}, fields, batch_size, transport)
