"""A deployment's autoscaling settings as the decision core reads them (no I/O).

Baseten's names and defaults (`min_replica` .. `target_utilization_percentage`) plus basalt's
additions: a token target, the KPA panic window, SLA mode's latency targets, the cold-start
lead and the scale-down step cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from basalt.pb import deploy_pb2


class Mode(Enum):
    CONCURRENCY = "concurrency"
    SLA = "sla"


@dataclass(frozen=True, slots=True)
class Settings:
    min_replica: int = 0
    max_replica: int = 1
    autoscaling_window_s: float = 60.0
    scale_down_delay_s: float = 900.0
    concurrency_target: int = 1
    target_utilization_percentage: int = 70
    target_in_flight_tokens: int = 0
    mode: Mode = Mode.CONCURRENCY
    panic_window_s: float = 6.0  # 0: no panic mode
    panic_threshold: float = 2.0  # panic-window demand / ready capacity that enters panic
    ttft_p90_target_ms: float = 0.0
    itl_p90_target_ms: float = 0.0
    cold_start_lead: bool = True
    scale_down_step: int = 1

    @property
    def utilization(self) -> float:
        return self.target_utilization_percentage / 100.0

    @property
    def per_replica_concurrency(self) -> float:
        """Concurrency one replica should carry: `concurrency_target` x utilization."""
        return self.concurrency_target * self.utilization

    @classmethod
    def from_proto(cls, pb: deploy_pb2.AutoscalingSettings) -> Settings:
        """Settings from a stored record; a zero (unset) field of basalt's additions means
        its default, except where 0 means off (tokens, panic window, SLA targets)."""
        return cls(
            min_replica=pb.min_replica,
            max_replica=max(pb.max_replica, pb.min_replica),
            autoscaling_window_s=float(pb.autoscaling_window or 60),
            scale_down_delay_s=float(pb.scale_down_delay),
            concurrency_target=pb.concurrency_target or 1,
            target_utilization_percentage=pb.target_utilization_percentage or 70,
            target_in_flight_tokens=pb.target_in_flight_tokens,
            mode=Mode(pb.scaling_mode) if pb.scaling_mode else Mode.CONCURRENCY,
            panic_window_s=float(pb.panic_window),
            panic_threshold=(pb.panic_threshold_percentage or 200) / 100.0,
            ttft_p90_target_ms=pb.ttft_p90_target_ms,
            itl_p90_target_ms=pb.itl_p90_target_ms,
            cold_start_lead=pb.cold_start_lead,
            scale_down_step=pb.scale_down_step or 1,
        )
