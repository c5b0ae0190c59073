"""The KPA reconciler's scale rules: bounds, initial scale and scale-to-zero (SPEC §3.4, §3.6).

A sans-I/O port of ``pkg/reconciler/autoscaling/kpa/scaler.go`` and the PodAutoscaler status
logic of ``kpa.go`` that it depends on (Active/Activating/Inactive, scale target initialised,
ServerlessService Proxy/Serve mode). Call :meth:`ScaleController.replicas` on every decider
tick with the latest :class:`~autoscaler.decider.Decision`, the ready pod count and the
replicas currently requested from the platform; it returns the count to actuate, or ``None``.

Knative probes the revision's public service before removing the last pod, to be sure the
activator is already in the path. Our platforms always route a revision through the activator
while it is in Proxy mode and whenever it is at zero, so that probe is not needed: the
controller tracks Proxy mode itself (:attr:`ScaleController.mode`; the caller must put the
activator in the path when it is ``"proxy"``) and measures the grace period from it.
"""

from __future__ import annotations

from .config import RevisionScaling
from .decider import Decision

__all__ = [
    "ACTIVATING",
    "ACTIVE",
    "DEFAULT_ACTIVATION_TIMEOUT",
    "INACTIVE",
    "PROXY",
    "SERVE",
    "ScaleController",
    "apply_bounds",
]

ACTIVATING = "activating"
ACTIVE = "active"
INACTIVE = "inactive"
SERVE = "serve"
PROXY = "proxy"

DEFAULT_ACTIVATION_TIMEOUT = 630.0
"""Give up activating after ``progress-deadline`` (600 s) plus 30 s and allow zero (SPEC §3.6)."""


def apply_bounds(lo: int, hi: int, x: int) -> int:
    """Clamp ``x`` to ``[lo, hi]`` with ``hi == 0`` meaning unlimited; ``lo`` wins over ``hi``."""
    if x < lo:
        return lo
    if hi != 0 and x > hi:
        return hi
    return x


class ScaleController:
    """One revision's scale decisions over time (Knative's PA reconcile, without the I/O).

    State follows the PodAutoscaler ``Active`` condition: a new revision is *activating*; it is
    *active* once it has the pods it needs, and *inactive* after it has been active for a
    stable window and the decider wants 0. From inactive it goes to zero once it has been
    inactive for ``max(grace, retention)``, or — once the pod retention has passed — once it
    has been in Proxy mode for the grace period (Knative's "fast path": with the default TBC of
    211, a small revision is in Proxy mode all along, so zero follows inactivity at once).
    """

    def __init__(
        self,
        scaling: RevisionScaling,
        now: float,
        *,
        activation_timeout: float = DEFAULT_ACTIVATION_TIMEOUT,
    ) -> None:
        self._scaling = scaling
        self._activation_timeout = activation_timeout
        self._state = ACTIVATING
        self._since = now  # when the state last changed
        self._initialized = False
        self._mode: str | None = None
        self._proxy_since: float | None = None
        self._wake_at: float | None = None

    @property
    def state(self) -> str:
        """``"activating"``, ``"active"`` or ``"inactive"`` (the PA Active condition)."""
        return self._state

    @property
    def state_since(self) -> float:
        """When the state last changed."""
        return self._since

    @property
    def initialized(self) -> bool:
        """Whether the revision has once reached its initial scale (then initial scale is moot)."""
        return self._initialized

    @property
    def mode(self) -> str | None:
        """``"proxy"`` (activator in the path) or ``"serve"``; ``None`` before the first call.

        Knative's SKS mode: Proxy when the scale is 0, EBC < 0, or the scale is unknown while
        inactive. As Knative's SKS does, keep the activator in the path in Serve mode too while
        the revision has no ready pod.
        """
        return self._mode

    @property
    def wake_at(self) -> float | None:
        """When a waiting rule expires (Knative re-enqueues then); ``None`` if nothing waits."""
        return self._wake_at

    def update(self, scaling: RevisionScaling) -> None:
        """Apply changed settings from the next call on."""
        self._scaling = scaling

    def replicas(self, now: float, decision: Decision, ready: int, current: int) -> int | None:
        """The replica count to actuate now, or ``None`` for no change.

        ``decision`` is the decider's latest; ``ready`` the ready pods; ``current`` the
        replicas currently requested from the platform.
        """
        self._wake_at = None
        previous_state = self._state
        want, apply = self._scale(now, decision.desired)
        if apply and want > 0 and current == 0 and self._initialized:
            # Scaling up from zero (not the first deployment): at least the activation scale.
            s = self._scaling
            want = apply_bounds(0, s.max_scale, max(want, s.activation_scale))
        self._compute_active(now, want, ready)
        proxy = (
            want == 0
            or decision.excess_burst_capacity < 0
            or (want < 0 and previous_state == INACTIVE)
        )
        mode = PROXY if proxy else SERVE
        if mode != self._mode:
            self._mode = mode
            self._proxy_since = now if proxy else None
        if not apply or want < 0 or want == current:
            return None
        return want

    def _scale(self, now: float, desired: int) -> tuple[int, bool]:
        """Knative ``scaler.scale`` up to actuation: (scale, whether to apply it)."""
        s = self._scaling
        if desired < 0 and self._state != ACTIVATING:
            return desired, False  # no metrics yet
        lo = s.min_scale
        if s.initial_scale > 1 and not self._initialized:
            # Initial scale is a floor until reached; unlike Knative we cap it at max-scale.
            lo = max(lo, apply_bounds(0, s.max_scale, s.initial_scale))
        want, apply = self._handle_scale_to_zero(now, apply_bounds(lo, s.max_scale, desired))
        if not apply and want < 0 and not self._initialized:
            # Knative creates the Deployment at the initial scale and holds it there while
            # activating; we are the ones who create it, so actuate the initial scale.
            return apply_bounds(lo, s.max_scale, s.initial_scale), True
        return want, apply

    def _handle_scale_to_zero(self, now: float, want: int) -> tuple[int, bool]:
        """Knative ``handleScaleToZero``: whether a desired 0 may be applied yet."""
        if want != 0:
            return want, True
        s = self._scaling
        if not s.enable_scale_to_zero:
            return 1, True
        elapsed = now - self._since
        if self._state == ACTIVATING:
            if elapsed > self._activation_timeout:
                return 0, True  # activation failed: give up the pods
            self._wake_at = self._since + self._activation_timeout
            return -1, False
        if self._state == ACTIVE:
            if elapsed >= s.stable_window:
                return 0, False  # not applied, but marks the revision inactive
            self._wake_at = self._since + s.stable_window
            return 1, True  # at most one pod for the rest of the stable window
        # Inactive.
        grace, retention = s.scale_to_zero_grace_period, s.pod_retention_period
        if elapsed >= max(grace, retention):
            return 0, True
        if retention > 0 and elapsed < retention:
            self._wake_at = self._since + retention
            return 0, False
        proxy_for = now - self._proxy_since if self._proxy_since is not None else 0.0
        if proxy_for >= grace:
            return 0, True  # the activator has been in the path for the grace period
        self._wake_at = now + grace - proxy_for
        return 0, False

    def _active_threshold(self) -> int:
        s = self._scaling
        if not self._initialized:
            return max(s.min_scale, s.initial_scale)
        return max(s.min_scale, 1)

    def _compute_active(self, now: float, want: int, ready: int) -> None:
        """Knative ``computeActiveCondition``: the new state from want, ready and the old one."""
        min_ready = self._active_threshold()
        if ready >= min_ready:
            self._initialized = True
        if want == 0 or min_ready == 0:
            self._set(INACTIVE, now)
        elif ready < min_ready:
            if want > 0 or self._state != INACTIVE:
                self._set(ACTIVATING, now)
        elif want > 0 or self._state != INACTIVE:
            self._set(ACTIVE, now)

    def _set(self, state: str, now: float) -> None:
        if state != self._state:
            self._state = state
            self._since = now
