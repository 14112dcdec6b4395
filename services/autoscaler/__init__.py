"""basalt autoscaler service: not built yet (its issue is open); it will follow the same shape."""

__all__: list[str] = []
